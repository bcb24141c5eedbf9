"""The ``retune`` flow (scheduled): fine-tune again only when the training data changed, promote only if better."""

from __future__ import annotations

import shutil
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from peftpipe import stages
from peftpipe.data.fingerprints import FINGERPRINTS_FILE, parse_fingerprints, read_records, record_fingerprint
from peftpipe.leakage import TestOverlap, check_overlap
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
    pointer = read_promoted(store, name)
    # Checked before any training: a refused comparison costs no GPU time.
    _check_test_overlap(loaded, store, paths, run_id, pointer)
    # A re-tune always scores the base model too: the comparison shows how far each adapter is above it.
    result = finetune(spec_path=spec_path, run_id=run_id, overrides={**(overrides or {}), "evaluation.baseline": True})
    if metric not in result["metrics"]:
        raise ValueError(f"evaluation.select_metric: {metric} was not computed for {run_id} (accuracy and macro_f1"
                         " need a label task). Fix: set evaluation.labels, or select f1.")
    candidate = result["metrics"][metric]
    incumbent: dict[str, Any] | None = None
    if pointer is not None:
        # Same test set for both: the new run's test split (dataset.test when given, else the records whose
        # content hash puts them in test, which no earlier adapter trained on), checked for overlap above.
        incumbent = evaluate_adapter(spec_path=spec_path, run_id=pointer["run_id"],
                                     overrides={**(overrides or {}), "evaluation.baseline": False},
                                     test_file=str(paths.data_file("test")), eval_id=f"{run_id}-incumbent")
    incumbent_value = incumbent["metrics"][metric] if incumbent else None
    better = is_better(metric, candidate, incumbent_value)
    if better:
        promote(store, name, run_id, metric, candidate, fingerprint)
    record_retune(store, name, run_id, fingerprint, better)

    rows = [_row("candidate (new)", run_id, result["metrics"], better)]
    if incumbent is not None:
        rows.append(_row("promoted (before)", pointer["run_id"], incumbent["metrics"], not better))
    if result["metrics"].get("baseline"):
        rows.append({"adapter": "base model (no adapter)", "run": "-",
                     **{k: round(v, 4) for k, v in result["metrics"]["baseline"].items() if isinstance(v, float)},
                     "promoted after": "-"})
    create_table_artifact(rows, key="retune-comparison",
                          description=f"New adapter vs the promoted one and the base model on the same test records"
                          f" ({run_id}'s test split); decided on {metric}")
    verdict = (f"promoted {run_id}: {metric} {candidate:.4f}" + (f" vs {incumbent_value:.4f}" if incumbent else
                                                                   " (no adapter was promoted before)")
               if better else f"kept {pointer['run_id']}: {metric} {incumbent_value:.4f}, new {candidate:.4f}")
    logger.info(verdict)
    create_markdown_artifact(f"tuned: {verdict}", key="retune-decision", description="What this re-tune did")
    publish_runs_table(loaded)  # every run of the spec, this one and the promoted one marked
    return {"action": "tuned", "run_id": run_id, "promoted": better, "metric": metric, "candidate": candidate,
            "incumbent": incumbent_value, "fingerprint": fingerprint}


def _check_test_overlap(loaded, store, paths, run_id: str, pointer: dict[str, Any] | None) -> None:  # noqa: ANN001
    """Report, and by ``evaluation.test_overlap`` refuse, test records that either adapter trained on."""
    trained: dict[str, set[str] | None] = {
        f"candidate (new) {run_id}": {record_fingerprint(r) for r in read_records(paths.data_file("train"))}}
    if pointer is not None:
        stored = store.read_bytes(pointer["run_id"], f"data/{FINGERPRINTS_FILE}")
        trained[f"promoted (before) {pointer['run_id']}"] = (
            parse_fingerprints(stored.decode()) if stored is not None else None)
    report = check_overlap(paths.data_file("test"), trained)
    logger = get_run_logger()
    create_table_artifact(report.rows(), key="retune-test-overlap",
                          description=f"Test records ({report.test_records}) that each adapter trained on")
    for who in report.unknown:
        logger.warning("%s published no training fingerprints: its overlap with the test records is unknown", who)
    if not report.leaked:
        return
    if loaded.spec.evaluation.test_overlap == "error":
        create_markdown_artifact(f"refused: {report.message()}", key="retune-decision",
                                 description="What this re-tune did")
        raise TestOverlap(report.message())
    logger.warning("%s (evaluation.test_overlap: warn, comparing anyway)", report.message())


def _row(role: str, run_id: str, metrics: dict[str, Any], kept: bool) -> dict[str, Any]:
    scores = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    return {"adapter": role, "run": run_id, **scores, "promoted after": "yes" if kept else "no"}
