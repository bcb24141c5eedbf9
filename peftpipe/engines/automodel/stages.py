"""The automodel engine's stages: the fine-tune job (AutoModel's recipe on the rendered YAML) and what a run publishes.

The fine-tune runs NeMo AutoModel's own entry point under torchrun, with the interpreter of
AutoModel's environment (``automodel.venv``, or the container's ``python``), through the same
backends as every engine. Evaluation is the pipeline's own (the hf engine's ``generate.py`` with
the PEFT adapter AutoModel wrote), so the scores of every engine are computed the same way.
Pure of Prefect and of torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from peftpipe.backends import Backend, LineSink, StageCommand, StopRule, backend_for
from peftpipe.engines import Engine, engine_for
from peftpipe.engines.automodel.config import automodel_config, automodel_inputs, data_parallel_size, render_yaml
from peftpipe.engines.automodel.layout import AutomodelPaths
from peftpipe.engines.automodel.outputs import collect_outputs, write_training_data
from peftpipe.engines.automodel.validate import interpreter
from peftpipe.paths import RunPaths
from peftpipe.results import StageFailed, TrainResult
from peftpipe.retry import AttemptSettings
from peftpipe.slurm.jobs import SOURCE_ROOT, stage_job
from peftpipe.spec import LoadedSpec
from peftpipe.spec_issues import SpecError

STAGES = ("finetune", "evaluate")
# Evaluation is the pipeline's own: generation and scores of the hf engine on AutoModel's PEFT adapter.
EVALUATED_BY = "hf"


def evaluating_engine() -> Engine:
    return engine_for(EVALUATED_BY)
# Runs with AutoModel's interpreter, imports nothing of peftpipe; in a container the source tree is bound.
LAUNCHER = Path(__file__).resolve().with_name("launcher.py")
# The job never reaches for the network: the model and the data are local files by then.
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def stage_command(loaded: LoadedSpec, paths: RunPaths, stage: str, settings: AttemptSettings,
                  model_path: Path | None) -> StageCommand:
    """The one builder of an automodel stage's job: ``peftpipe render`` prints it, the backends run it."""
    if stage == "evaluate":
        return evaluating_engine().job(loaded, paths, stage, settings, model_path)
    if stage not in STAGES:
        raise SpecError.single("--stage", f"engine automodel trains the HF checkpoint directly and has no {stage}"
                               " stage", "render finetune or evaluate")
    if model_path is None:
        raise ValueError("model: a Hub model's directory is known only after fetch-model. Fix: pass --model-path"
                         " with the fetched snapshot directory, or set model.path")
    spec, attempt = loaded.spec, settings.attempt
    config = automodel_config(spec, automodel_inputs(paths, model_path), settings.micro_batch_size,
                              settings.activation_checkpointing)
    yaml_file = AutomodelPaths(paths).config_file(attempt)
    ranks, nodes = spec.train.devices, spec.train.num_nodes
    # AutoModel runs its recipe in-process only inside a torchrun worker; one rank gets a torchrun too.
    single = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"] if ranks * nodes == 1 else []
    script_args = [*single, str(LAUNCHER), str(yaml_file)]
    python = interpreter(loaded)
    job = stage_job(spec, paths.run_id, paths, "finetune", attempt, script_args, host_python=python,
                    gpus_per_node=ranks, nodes=nodes, mem=settings.mem, model_path=model_path, code_root=SOURCE_ROOT)
    job = replace(job, env={**job.env, **OFFLINE})
    described = {"engine": "automodel", "stage": "finetune", "python": python, "script_args": script_args,
                 "config_file": str(yaml_file), "config": config}
    files = {yaml_file: render_yaml(config),
             paths.stage_config("finetune", attempt): json.dumps(described, indent=2) + "\n"}
    return StageCommand("finetune", attempt, script_args, ranks_per_node=ranks, gpus_per_node=ranks, nodes=nodes,
                        mem=settings.mem, model_path=model_path, job=job, files=files, described=described,
                        python=python, shown=(yaml_file,))


def finetune_stage(loaded: LoadedSpec, paths: RunPaths, model_path: Path, settings: AttemptSettings,
                   on_line: LineSink = print, backend: Backend | None = None, stop_rule: StopRule | None = None
                   ) -> TrainResult:
    """One AutoModel run; it resumes by itself from the ``LATEST`` checkpoint of the run's checkpoint_dir.

    A retry at a smaller local batch resumes from the same checkpoint with the same global batch:
    AutoModel's step scheduler restores the step and its stateful dataloader the data position.
    """
    write_training_data(paths, loaded.spec.dataset.prompt_template)
    stage = stage_command(loaded, paths, "finetune", settings, model_path)
    outcome = (backend or backend_for(loaded)).run(loaded, paths, stage, on_line, stop_rule)
    if not outcome.succeeded:
        raise StageFailed("finetune", outcome)
    spec = loaded.spec
    accumulation = spec.train.global_batch_size // (settings.micro_batch_size * data_parallel_size(spec))
    wall = time.time() - outcome.started_at if outcome.started_at else float("nan")
    summary = collect_outputs(paths, outcome.log_file, settings.micro_batch_size, accumulation, wall)
    return TrainResult.from_summary(summary, settings.micro_batch_size, outcome)


def run_files(loaded: LoadedSpec, paths: RunPaths) -> dict[str, Path]:
    """The hf engine's set (adapter, metrics, predictions, logs) plus AutoModel's own YAML and metric files."""
    files = evaluating_engine().run_files(loaded, paths)
    layout = AutomodelPaths(paths)
    for attempt_dir in sorted(paths.finetune_dir.glob("attempt-*")):
        if (attempt_dir / layout.config_file(1).name).is_file():
            files[f"jobs/finetune/{attempt_dir.name}.automodel.yaml"] = attempt_dir / layout.config_file(1).name
    for name in ("training.jsonl", "validation.jsonl"):
        if (layout.checkpoint_dir / name).is_file():
            files[f"finetune/automodel/{name}"] = layout.checkpoint_dir / name
    return files
