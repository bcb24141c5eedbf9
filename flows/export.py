"""The ``export`` flow: a published run as a ready-to-serve HF PEFT folder, optionally merged and pushed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from peftpipe.safe_names import check_run_id
from flows.finetune import DEFAULT_SPEC, load_or_log
from tasks.export import export_task


@flow(name="export", log_prints=True)
def export_run(run_id: str, spec_path: str = DEFAULT_SPEC, merge: bool = False, push_repo: str | None = None,
               out_dir: str | None = None, max_shard_size: str = "5GB", tolerance: float | None = None
               ) -> dict[str, Any]:
    """Export a published run: adapter folder with model card, ``merge`` for a merged model, ``push_repo`` to a Hub.

    Args:
        run_id: The published run (its manifest names base model, data fingerprint, spec and metrics).
        spec_path: The spec whose artifact store and Hub settings (endpoint, cache, token block) are used.
        merge: Also write base + adapter merged, after the logits parity check.
        push_repo: A Hub repo id to upload to (the merged model with ``merge``, else the adapter).
        out_dir: Where the files go; default ``<workdir>/<run_id>/export``. The export is also added to the
            run in the artifact store, under ``export/``.
        max_shard_size: Largest safetensors shard of the merged model.
        tolerance: Largest |logit difference| accepted; default by dtype.
    """
    check_run_id(run_id, "run_id parameter")
    loaded = load_or_log(spec_path, {})
    target = Path(out_dir) if out_dir else Path(loaded.spec.workdir) / run_id / "export"
    summary = export_task(loaded, run_id, target, merge, push_repo, max_shard_size, tolerance)
    parity = summary["parity"]
    lines = [f"# Export of {run_id}", "", *(f"- `{key}`" for key in summary["files"])]
    if parity:
        lines += ["", f"Merged model parity: max |logit diff| {parity['max_abs_logit_diff']:.3g} (tolerance"
                      f" {parity['tolerance']:g}, {parity['dtype']}) on {parity['prompts']} prompts; greedy"
                      f" generations equal: {parity['generations_equal']}."]
    if summary.get("pushed"):
        lines += ["", f"Pushed to `{summary['pushed']['repo_id']}` (commit {summary['pushed']['commit']})."]
    create_markdown_artifact("\n".join(lines), key="export", description=f"Export of run {run_id}")
    return summary
