"""``peftpipe export RUN_ID``: a published run as a ready-to-serve HF PEFT folder, optionally merged.

The export is built from what the artifact store holds (the manifest names the base model's Hub
repo id and pinned commit, the spec, the data fingerprint and the metrics), so it works on any
machine that can read the store and reach the Hub. Layout of ``out_dir``:

- ``adapter/``: ``adapter_config.json`` (base = Hub repo id + ``revision``), the adapter
  weights, the base's tokenizer files and a model card ``README.md``;
- ``merged/`` (``merge=True``): base with the adapter merged, sharded safetensors, config and
  tokenizer, written only after its logits matched base + adapter (``parity.json``).

This module imports no torch: merging is the engine's (``Engine.merge``), which imports them when called.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from peftpipe.artifacts import ArtifactStore, ArtifactStoreError, add_to_published_run, restore

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
PARITY_PROMPTS = 4
NOT_MERGEABLE = {
    "ptuning": "p-tuning learns virtual prompt tokens fed in front of the input by a prompt encoder; there is no"
               " weight of the base model to fold them into",
}
NEMO_LEGACY = ("run {run!r}: engine nemo (NeMo 1.x) published a .nemo adapter, which is NeMo's own format (Megatron"
               " layout, adapter only), not an HF PEFT folder, so it cannot be exported, merged or pushed as one."
               " Fix: use it with NeMo itself (megatron_gpt_generate.py with the base .nemo; `peftpipe artifacts get"
               " {run_id} adapter DIR` fetches it), or train with engine hf to get an exportable adapter.")


class ExportError(RuntimeError):
    """Export refused or failed; the message names the run and the fix. ``exit_code`` 2: bad input."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ExportResult:
    run_id: str
    adapter_dir: Path
    merged_dir: Path | None = None
    parity: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)  # store key -> local file


def published_manifest(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    """The run's manifest, or one clear error for an unknown or unpublished run."""
    manifest = store.read_manifest(run_id)
    if manifest is not None:
        return manifest
    if run_id in store.list_runs():
        raise ExportError(f"run {run_id!r} has no manifest at {store.url(run_id)}: it is not published (or its"
                          " publish has not finished). Fix: finish the run (peftpipe run --run-id"
                          f" {run_id}), then export it.")
    raise ExportError(f"run {run_id!r} is not in the artifact store {store.url(run_id).rstrip('/').rsplit('/', 1)[0]}."
                      " Fix: check the run id (`peftpipe artifacts ls` lists the runs) and --store/--spec.")


def check_exportable(run_id: str, manifest: dict[str, Any], merge: bool, engine_for: Callable[[str], Any]
                     ) -> tuple[dict[str, Any], Any]:
    """The run's spec and engine, after refusing what cannot be exported (NeMo 1.x adapters, merging p-tuning)."""
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        raise ExportError(f"run {run_id!r}: its manifest holds no spec, so its engine and method are unknown."
                          f" Fix: republish the run (peftpipe run --run-id {run_id}).")
    if spec.get("engine") == "nemo":
        raise ExportError(NEMO_LEGACY.format(run=run_id, run_id=run_id), exit_code=2)
    try:
        engine = engine_for(str(spec.get("engine", "hf")))
    except (KeyError, ValueError):
        engine = None
    if engine is None or not hasattr(engine, "merge"):
        raise ExportError(f"run {run_id!r}: engine {spec.get('engine')} publishes no HF PEFT adapter folder;"
                          " only such adapters can be exported.", exit_code=2)
    method = (spec.get("peft") or {}).get("method")
    if merge and method in NOT_MERGEABLE:
        raise ExportError(f"run {run_id!r}: --merge is not possible for peft.method {method}: {NOT_MERGEABLE[method]}."
                          " Fix: export without --merge and load the adapter with peft.", exit_code=2)
    return spec, engine


def export_run(store: ArtifactStore, run_id: str, out_dir: Path, engine_for: Callable[[str], Any],
               base_path: Callable[[str, str], Path], merge: bool = False, max_shard_size: str = "5GB",
               tolerance: float | None = None) -> ExportResult:
    """Write the export of ``run_id`` under ``out_dir``; ``base_path(repo_id, commit)`` fetches the base model."""
    manifest = published_manifest(store, run_id)
    spec, engine = check_exportable(run_id, manifest, merge, engine_for)
    base = manifest.get("base_model") or {}
    repo_id, commit = base.get("repo_id"), base.get("commit_sha")
    model_dir = base_path(repo_id, commit) if repo_id else Path(str(base.get("path")))
    if not model_dir.is_dir():
        raise ExportError(f"run {run_id!r}: its base model is the local directory {model_dir}, which is not here."
                          " Fix: export on the machine that has it, or train from a Hub repo (model.repo_id).")
    adapter_dir = out_dir / "adapter"
    # A fresh export: nothing of an earlier one (a merge, its parity) may be published as this one's.
    shutil.rmtree(adapter_dir, ignore_errors=True)
    shutil.rmtree(out_dir / "merged", ignore_errors=True)
    (out_dir / "parity.json").unlink(missing_ok=True)
    try:
        restore(store, run_id, "adapter", adapter_dir)
        metrics = _stored_json(store, run_id, "evaluate/metrics.json") or manifest.get("metrics") or {}
    except ArtifactStoreError as error:
        raise ExportError(str(error)) from None
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, adapter_dir / name)
    result = ExportResult(run_id, adapter_dir)
    if merge:
        result.merged_dir = out_dir / "merged"
        prompts = _parity_prompts(store, run_id, spec)
        result.parity = engine.merge(model_dir, adapter_dir, result.merged_dir, prompts, max_shard_size, tolerance)
        (out_dir / "parity.json").write_text(json.dumps(result.parity, indent=2) + "\n")
    (adapter_dir / "README.md").write_text(model_card(run_id, manifest, spec, metrics, result.parity), encoding="utf-8")
    if result.merged_dir is not None:
        (result.merged_dir / "README.md").write_text(model_card(run_id, manifest, spec, metrics, result.parity,
                                                                merged=True), encoding="utf-8")
    # Only what this export wrote: out_dir may be a folder that holds other files (--out .).
    written = [*adapter_dir.rglob("*"), *(result.merged_dir.rglob("*") if result.merged_dir else ()),
               *([out_dir / "parity.json"] if merge else [])]
    result.files = {f"export/{p.relative_to(out_dir).as_posix()}": p for p in sorted(written)
                    if p.is_file() and not p.name.startswith(".")}
    return result


def _stored_json(store: ArtifactStore, run_id: str, key: str) -> dict[str, Any] | None:
    content = store.read_bytes(run_id, key)
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


def _parity_prompts(store: ArtifactStore, run_id: str, spec: dict[str, Any]) -> list[str]:
    """A few test prompts of the run, with its training template (a fixed prompt if none is stored)."""
    template = (spec.get("dataset") or {}).get("prompt_template", "{input}\nAnswer: {output}")
    prefix = template[: template.index("{output}")] if "{output}" in template else template
    content = store.read_bytes(run_id, "evaluate/predictions.jsonl") or b""
    prompts = []
    for line in content.decode("utf-8", "replace").splitlines()[:PARITY_PROMPTS]:
        try:
            prompts.append(prefix.format(**json.loads(line)))
        except (ValueError, KeyError, IndexError):
            continue
    return prompts or [prefix.format(input="What does a checkpoint save?")]


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(run_id: str, manifest: dict[str, Any], spec: dict[str, Any], metrics: dict[str, Any],
               parity: dict[str, Any] | None, merged: bool = False) -> str:
    """The README.md: base, data fingerprint, method, hyperparameters, metrics with the baseline (adapter or merged)."""
    base = manifest.get("base_model") or {}
    peft = spec.get("peft") or {}
    method = peft.get("method", "lora")
    train = spec.get("train") or {}
    dataset = manifest.get("dataset") or {}
    repo = base.get("repo_id") or base.get("path")
    counts = ", ".join(f"{k} {v}" for k, v in (dataset.get("counts") or {}).items())
    what = f"`{repo}` with a {method} adapter merged into its weights" if merged else f"A {method} adapter"
    lines = ["---", f"base_model: {repo}", f"library_name: {'transformers' if merged else 'peft'}", "tags:",
             f"- {method}", "- peftpipe", "---", "", f"# {spec.get('name', run_id)} ({run_id})", "",
             f"{what}, trained by peftpipe {manifest.get('peftpipe_version', '')} with engine"
             f" {spec.get('engine', 'hf')}.", "",
             "| | |", "|---|---|",
             f"| base model | `{repo}` at commit `{base.get('commit_sha')}` |",
             f"| data | format {(spec.get('dataset') or {}).get('format')}, fingerprint `{dataset.get('fingerprint')}`,"
             f" records: {counts} |",
             f"| prompt template | `{json.dumps((spec.get('dataset') or {}).get('prompt_template'))}` |",
             f"| method | {method}: {json.dumps(peft.get(method) or {}, sort_keys=True)} |"]
    for key in ("global_batch_size", "max_steps", "learning_rate", "lr_schedule", "warmup_steps", "max_seq_length",
                "seed"):
        if key in train:
            lines.append(f"| train.{key} | {train[key]} |")
    lines += ["", "## Metrics (test split)", ""]
    baseline, delta = metrics.get("baseline") or {}, metrics.get("delta") or {}
    lines += ["| metric | base model | adapter | delta |", "|---|---|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "records":
            lines.append(f"| {key} | {_figure(baseline.get(key, '-'))} | {_figure(value)} | {_figure(delta.get(key, '-'))} |")
    lines += ["", f"Test records: {metrics.get('records', '-')}.", ""]
    if parity is not None:
        lines += ["## Merged model", "",
                  f"Merged weights checked against base + adapter on {parity['prompts']} test prompts: max |logit"
                  f" difference| {parity['max_abs_logit_diff']:.3g} (tolerance {parity['tolerance']:g},"
                  f" {parity['dtype']}); greedy generations equal: {parity['generations_equal']}.", ""]
    loader = "from transformers import AutoModelForCausalLM as Model" if merged else \
        "from peft import AutoPeftModelForCausalLM as Model"
    lines += ["## Use", "", "```python", loader, "model = Model.from_pretrained(\"<this folder or repo>\")", "```", ""]
    return "\n".join(lines)


def push(folder: Path, repo_id: str, endpoint: str | None, token: str | None, message: str) -> str:
    """Upload ``folder`` to the Hub repo ``repo_id`` (created if missing); returns the commit id."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message).oid
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "no answer"
        hint = " Fix: set HF_TOKEN (or the spec's token block) to a token with write access." if status in (401, 403) \
            else ""
        raise ExportError(f"push to {repo_id} at {endpoint or 'the Hub'} refused ({status}).{hint}") from None
    except (OSError, httpx.TransportError) as error:  # no answer: a wrong endpoint, a Hub that is down
        raise ExportError(f"push to {repo_id} at {endpoint or 'the Hub'} failed: {error}. Fix: check HF_ENDPOINT"
                          " and that the Hub is reachable.") from None


def export_stage(store: ArtifactStore, run_id: str, out_dir: Path, engine_for: Callable[[str], Any], *,
                 merge: bool = False, push_repo: str | None = None, endpoint: str | None = None,
                 cache_dir: Path | None = None, token: str | None = None, max_shard_size: str = "5GB",
                 tolerance: float | None = None, to_store: bool = True) -> dict[str, Any]:
    """Export, optionally push, and add the export to the run in the store: what the CLI and the task run."""
    from peftpipe.hub.fetch import FetchError, fetch_model

    def base_path(repo_id: str, commit: str) -> Path:
        try:
            return fetch_model(repo_id, commit, cache_dir=cache_dir, endpoint=endpoint, token=token).path
        except FetchError as error:
            raise ExportError(f"run {run_id!r}: its base model {repo_id}@{commit} could not be fetched: {error}"
                              ) from None

    result = export_run(store, run_id, out_dir, engine_for, base_path, merge, max_shard_size, tolerance)
    summary: dict[str, Any] = {"run_id": run_id, "adapter": str(result.adapter_dir),
                               "merged": str(result.merged_dir) if result.merged_dir else None,
                               "parity": result.parity, "files": sorted(result.files)}
    if push_repo:
        folder = result.merged_dir or result.adapter_dir
        summary["pushed"] = {"repo_id": push_repo, "folder": folder.name,
                             "commit": push(folder, push_repo, endpoint, token, f"peftpipe export of run {run_id}")}
    if to_store:
        published = add_to_published_run(store, run_id, result.files, {"export": {
            "merged": result.merged_dir is not None, "parity": result.parity, "pushed": summary.get("pushed")}})
        summary["manifest"] = published.manifest["manifest_url"]
    return summary
