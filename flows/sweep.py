"""The ``sweep`` flow: a grid over spec keys, one child ``finetune`` run per point, then the comparison table.

Each child is a full ``finetune`` subflow run (its own OOM retries, its own page in the UI); its
GPU jobs take slots of the same global concurrency limit as any other run. Children run one
after another; every child splits the data with the same ``train.seed``, so all are scored on
the same test set (unless ``train.seed`` itself is swept). Not in threads: two children started
at once as task-wrapped subflows in one process failed on transformers' lazy imports (``cannot
import name 'AutoConfig'`` in one of them); concurrent children would need processes of their own
(e.g. deployment runs).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run as current_flow_run

from flows.finetune import DEFAULT_SPEC, name_flow_run, finetune, load_or_log
from flows.store import artifact_store
from peftpipe import stages
from peftpipe.promotion import is_better, promote, read_promoted
from peftpipe.run_table import collect_runs, comparison
from peftpipe.sweep import best_child, child_run_id, expand_grid


def _sweep_name() -> str:
    return current_flow_run.parameters.get("sweep_id") or "sweep-pending"


@flow(name="sweep", flow_run_name=_sweep_name, log_prints=True, validate_parameters=True)
def sweep(grid: dict[str, list[Any]], spec_path: str = DEFAULT_SPEC, sweep_id: str | None = None,
          overrides: dict[str, Any] | None = None, promote_best: bool = False) -> dict[str, Any]:
    """Fine-tune once per point of ``grid`` and compare the runs.

    Args:
        grid: Spec keys and the values to try, e.g. ``{"train.learning_rate": [1e-4, 3e-4]}``.
        spec_path: The run spec every child starts from.
        sweep_id: Prefix of the child run ids (``<sweep_id>-1``, ...); default ``<spec name>-sweep-<UTC time>``.
        overrides: Dotted spec keys applied to every child.
        promote_best: Promote the best child by ``evaluation.select_metric`` if it beats the promoted adapter.
    """
    logger = get_run_logger()
    points = expand_grid(grid)
    common = dict(overrides or {})
    # Every point is validated before the first child starts: a bad value fails the sweep, not child 3.
    checked = [load_or_log(spec_path, {**common, **point}) for point in points]
    spec = checked[0].spec
    if sweep_id is None:
        sweep_id = stages.new_run_id(f"{spec.name}-sweep")
        name_flow_run(sweep_id)  # the UI and the children's parent link show the sweep id, not a random name
    results: list[dict[str, Any]] = []
    for index, point in enumerate(points):
        run_id = child_run_id(sweep_id, index)
        logger.info("child %d of %d: %s with %s", index + 1, len(points), run_id, point)
        state = finetune(spec_path=spec_path, run_id=run_id, overrides={**common, **point}, return_state=True)
        result = state.result(raise_on_failure=False)
        results.append({**(result if isinstance(result, dict) else {"error": str(result)}), "run_id": run_id,
                        "point": point, "state": state.name})
    store = artifact_store(checked[0])
    metric = spec.evaluation.select_metric
    best = best_child([r for r in results if r["state"] == "Completed"], metric)
    promoted = False
    if best is not None:
        logger.info("best child: %s (%s %.4f) with %s", best["run_id"], metric, best["metrics"][metric], best["point"])
        pointer = read_promoted(store, spec.name)
        same_data = pointer is not None and pointer.get("fingerprint") == best["data"]["fingerprint"]
        if promote_best and (not same_data or is_better(metric, best["metrics"][metric], pointer["value"])):
            promote(store, spec.name, best["run_id"], metric, best["metrics"][metric], best["data"]["fingerprint"])
            promoted = True
            logger.info("promoted %s", best["run_id"])
    # After the promotion, so the table's promoted row is the decision just taken.
    by_id = {run.run_id: run for run in collect_runs(store, spec.name)}
    published = [by_id[r["run_id"]] for r in results if r["run_id"] in by_id]
    if published:
        create_table_artifact(comparison(published), key=f"sweep-{spec.name}",
                              description=f"Sweep {sweep_id}: every child key by key (* = differs)")
    return {"sweep_id": sweep_id, "children": [{"run_id": r["run_id"], "point": r["point"], "state": r["state"],
                                                 "metrics": r.get("metrics", {})} for r in results],
            "best": best["run_id"] if best else None, "metric": metric, "promoted": promoted}
