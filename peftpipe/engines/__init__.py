"""Engines: what runs a fine-tune and an evaluation, one folder each, behind the :class:`Engine` protocol.

The pipeline (``peftpipe.stages``, the tasks and flows, ``peftpipe render``) never branches on
``spec.engine``; it asks :func:`engine_for` once and calls the engine's methods.

Adding an engine
----------------
1. A folder ``peftpipe/engines/<name>/`` holding the engine's own code: its stage functions
   (``stages.py``), how it renders commands, and a module ``engine.py`` whose ``ENGINE`` is an
   object with the methods of :class:`Engine` below.
2. One line in ``ENGINES`` (``peftpipe/engine_registry.py``):
   ``"<name>": "peftpipe.engines.<name>.engine"``.

The spec's ``engine`` field accepts the names in ``ENGINES``. What an engine must provide:

- ``name``, ``methods`` (the ``peft.method`` values it runs), ``stages`` (the stages that run as
  jobs, in order: e.g. ``("finetune", "evaluate")``) and ``memory_model`` (whether the hf memory
  estimate of ``preflight.py`` describes it: it then picks attempt 1's micro batch) and
  ``memory_rungs`` (the rungs of ``memory_ladder.py`` it implements, e.g. ``("checkpointing",)``);
- ``validate(loaded)``: the engine's own checks of the spec, as a list of
  :class:`~peftpipe.spec_issues.SpecIssue` (never raise for a bad spec);
- ``data_parallel_size(spec)``: the ranks the global batch is split over; what a retry's smaller
  micro batch must divide (the retry may change micro batch, gradient accumulation, the memory
  rungs it offers and host memory: :class:`~peftpipe.retry.AttemptSettings`);
- ``job(loaded, paths, stage, settings, model_path)``: THE job builder. It returns the stage's
  :class:`~peftpipe.backends.StageCommand`: program, ranks, the Slurm
  :class:`~peftpipe.slurm.render.JobRequest` and the attempt's config files. ``peftpipe render``
  prints exactly this job and the backends submit exactly this job, so they cannot differ;
  it must be pure (write nothing);
- ``prepare(loaded, paths, model, ...)``: work before fine-tuning (nemo: the HF -> .nemo
  conversion); returns nothing;
- ``finetune(loaded, paths, model_path, settings, ...)``: run one attempt and read back what it
  produced as a :class:`~peftpipe.results.TrainResult` (final step, loss, resumed step, peak
  memory, ...), or raise :class:`~peftpipe.results.StageFailed` with the log tail the retry
  policy diagnoses;
- ``evaluate(loaded, paths, model_path, ...)``: generate and score; the metrics dict;
- ``run_files(loaded, paths)``: what a finished run publishes, by artifact-store key.

Optional, for engines whose adapter is an HF PEFT folder: ``answer(...)`` (``peftpipe generate``) and
``merge(model_path, adapter_dir, out_dir, prompts, max_shard_size, tolerance)`` (``peftpipe export
--merge``: the merged model after the logits parity check, returning its figures). An engine without
``merge`` (NeMo 1.x's ``.nemo`` adapters) is refused by ``peftpipe export`` with the reason.

File names come from :class:`~peftpipe.paths.RunPaths` (per attempt: ``stage_config``,
``job_script``, ``stage_log``); the run id is ``paths.run_id``.

Engines are loaded by module name so that the core's checks (``validation.py``) and stages can
look an engine up while the engine imports the core, without a circle.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from peftpipe.engine_registry import ENGINES
from peftpipe.memory_ladder import MemoryLadder

if TYPE_CHECKING:
    from peftpipe.artifacts_s3 import S3Access
    from peftpipe.backends import Backend, LineSink, StageCommand, StopRule
    from peftpipe.hub.fetch import FetchedModel
    from peftpipe.paths import RunPaths
    from peftpipe.results import TrainResult
    from peftpipe.retry import AttemptSettings
    from peftpipe.spec import LoadedSpec, RunSpec
    from peftpipe.spec_issues import SpecIssue



class Engine(Protocol):
    """What the pipeline asks of an engine; see the module docstring for each method's contract."""

    name: str
    methods: tuple[str, ...]
    stages: tuple[str, ...]
    memory_model: bool

    def validate(self, loaded: LoadedSpec) -> list[SpecIssue]: ...

    def data_parallel_size(self, spec: RunSpec) -> int: ...

    def job(self, loaded: LoadedSpec, paths: RunPaths, stage: str, settings: AttemptSettings,
            model_path: Path | None) -> StageCommand: ...

    def prepare(self, loaded: LoadedSpec, paths: RunPaths, model: FetchedModel, *, on_line: LineSink = print,
                backend: Backend | None = None, access: S3Access | None = None) -> None: ...

    def finetune(self, loaded: LoadedSpec, paths: RunPaths, model_path: Path, settings: AttemptSettings, *,
                 on_line: LineSink = print, backend: Backend | None = None, stop_rule: StopRule | None = None,
                 access: S3Access | None = None) -> TrainResult: ...

    def evaluate(self, loaded: LoadedSpec, paths: RunPaths, model_path: Path, *, on_line: LineSink = print,
                 backend: Backend | None = None, access: S3Access | None = None) -> dict[str, Any]: ...

    def run_files(self, loaded: LoadedSpec, paths: RunPaths) -> dict[str, Path]: ...


def engine_for(name: str) -> Engine:
    """The engine registered as ``name`` (``spec.engine``)."""
    if name not in ENGINES:
        raise ValueError(f"engine {name!r} is not registered; known engines: {', '.join(ENGINES)}")
    return importlib.import_module(ENGINES[name]).ENGINE


def ladder_for(spec: RunSpec) -> MemoryLadder:
    """The memory ladder of a run spec with the rungs its engine offers (``memory_rungs``)."""
    engine = engine_for(spec.engine)
    train = spec.train
    return MemoryLadder.for_run(train.memory, train.activation_checkpointing, engine.data_parallel_size(spec),
                                getattr(engine, "memory_rungs", ("checkpointing",)), f"engine {spec.engine}")
