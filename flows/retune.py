"""The ``retune`` flow (scheduled): fine-tune again only when the training data changed, promote only if better."""

from __future__ import annotations

import shutil
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from peftpipe import stages
from peftpipe.promotion import is_better, promote, read_last_retune, read_promoted, record_retune
from flows.evaluate import evaluate_adapter
from flows.finetune import DEFAULT_SPEC, finetune, load_or_log
from flows.runs_table import publish_runs_table
from flows.store import artifact_store
from tasks.prepare_data import prepare_data


@flow(name="retune", log_prints=True)
def retune(spec_path: str = DEFAULT_SPEC, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fingerprint the training data; if it changed since the last successful re-tune, fine-tune,
    score the promoted adapter on the new test split, and promote the new adapter if it is better
    on ``evaluation.select_metric``.

    Args:
        spec_path: The run spec to re-tune.
        overrides: Dotted spec keys applied to every run, e.g. ``{"train.max_steps": 200}``.
    """
    logger = get_run_logger()
    loaded = load_or_log(spec_path, overrides or {})
    name, metric = loaded.spec.name, loaded.spec.evaluation.select_metric
    store = artifact_store(loaded)
    run_id = stages.new_run_id(name)
    paths = stages.run_paths(loaded, run_id)
    # The prepare-data stage's fingerprint covers the converted records and every option that shapes
    # them; its cache makes this cheap, and the fine-tune below reuses the prepared copy.
    fingerprint = prepare_data(loaded, paths).fingerprint
    last = read_last_retune(store, name)
    if last is not None and last["fingerprint"] == fingerprint:
        shutil.rmtree(paths.root, ignore_errors=True)
        message = (f"skipped: the training data of {name} is unchanged since run {last['run_id']}"
                   f" (fingerprint {fingerprint[:12]})")
        logger.info(message)
        create_markdown_artifact(message, key="retune-decision", description="What this re-tune did")
        return {"action": "skipped", "fingerprint": fingerprint, "last_run_id": last["run_id"]}

    logger.info("training data of %s changed (fingerprint %s, was %s): fine-tuning run %s", name, fingerprint[:12],
                (last or {}).get("fingerprint", "none")[:12], run_id)
    result = finetune(spec_path=spec_path, run_id=run_id, overrides=overrides)
    candidate = result["metrics"][metric]
    pointer = read_promoted(store, name)
    incumbent: dict[str, Any] | None = None
    if pointer is not None:
        # Same test set for both: the new run's test split, which the promoted adapter has not seen scored.
        incumbent = evaluate_adapter(spec_path=spec_path, run_id=pointer["run_id"], overrides=overrides,
                                     test_file=str(paths.data_file("test")), eval_id=f"{run_id}-incumbent")
    incumbent_value = incumbent["metrics"][metric] if incumbent else None
    better = is_better(metric, candidate, incumbent_value)
    if better:
        promote(store, name, run_id, metric, candidate, fingerprint)
    record_retune(store, name, run_id, fingerprint, better)

    rows = [_row("candidate (new)", run_id, result["metrics"], better)]
    if incumbent is not None:
        rows.append(_row("promoted (before)", pointer["run_id"], incumbent["metrics"], not better))
    create_table_artifact(rows, key="retune-comparison",
                          description=f"New adapter vs the promoted one on {run_id}'s test split; decided on {metric}")
    verdict = (f"promoted {run_id}: {metric} {candidate:.4f}" + (f" vs {incumbent_value:.4f}" if incumbent else
                                                                   " (no adapter was promoted before)")
               if better else f"kept {pointer['run_id']}: {metric} {incumbent_value:.4f}, new {candidate:.4f}")
    logger.info(verdict)
    create_markdown_artifact(f"tuned: {verdict}", key="retune-decision", description="What this re-tune did")
    publish_runs_table(loaded)  # every run of the spec, this one and the promoted one marked
    return {"action": "tuned", "run_id": run_id, "promoted": better, "metric": metric, "candidate": candidate,
            "incumbent": incumbent_value, "fingerprint": fingerprint}


def _row(role: str, run_id: str, metrics: dict[str, Any], kept: bool) -> dict[str, Any]:
    scores = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    return {"adapter": role, "run": run_id, **scores, "promoted after": "yes" if kept else "no"}
