from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import store_access
from peftpipe import stages
from peftpipe.artifacts import Progress, StoreUnavailable
from peftpipe.data.prepare import PreparedData
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec

LARGE = 64 << 20  # progress is logged for objects at least this big, every quarter


def _store_was_unavailable(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn
    """Retry only when the store did not answer; a refused key or a missing bucket will not heal."""
    try:
        state.result()
    except StoreUnavailable:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False


def _quarterly(log) -> Progress:  # noqa: ANN001
    reported: dict[str, int] = {}

    def report(key: str, done: int, total: int) -> None:
        quarter = done * 4 // total if total >= LARGE else 0
        if quarter > reported.get(key, 0):
            reported[key] = quarter
            log("%s: %d%% of %.0f MiB", key, quarter * 25, total / (1 << 20))

    return report


# A publish is idempotent (objects already stored are skipped), so a retry sends only what is missing.
@task(name="publish", task_run_name="publish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=_store_was_unavailable)
def publish(loaded: LoadedSpec, paths: RunPaths, run_id: str, model: FetchedModel, data: PreparedData,
            metrics: dict[str, Any]) -> dict[str, Any]:
    """Store adapter, predictions, metrics and logs, then the manifest that marks the run complete."""
    logger = get_run_logger()
    manifest = stages.publish_stage(loaded, paths, run_id, model, data, metrics, access=store_access(loaded),
                                    on_line=logger.info, on_progress=_quarterly(logger.info))
    logger.info("published %d objects; manifest %s", len(manifest["objects"]), manifest["manifest_url"])
    return manifest
