"""The finetune flow with a gated model and an S3 store: secrets from blocks, used and never written down."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest

from peftpipe.hub.mirror import MirrorRoot
from tests.conftest import TINY_REPO_ID, serve_mirror, write_spec
from tests.s3_fixtures import BUCKET, SeaweedS3

pytestmark = pytest.mark.e2e


def _everything_prefect_kept(flow_run_id) -> str:  # noqa: ANN001 - a UUID
    """Logs, parameters, task runs and artifacts of the flow run, as text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter
    from prefect.client.schemas.filters import FlowRunFilterId, LogFilter, LogFilterFlowRunId

    import time

    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:
            logs, page = [], 200
            while True:  # the API answers a page at a time; a fine-tune logs hundreds of lines
                batch = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                         limit=page, offset=len(logs))
                logs += batch
                if len(batch) < page:
                    break
            # Logs reach the API in batches, a moment after the flow returns.
            if any("published" in log.message for log in logs) or time.monotonic() > deadline:
                break
            time.sleep(1)
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert any("published" in log.message for log in logs), "the flow's logs were read back"
    return "\n".join([*(log.message for log in logs), flow_run.model_dump_json(),
                      *(run.model_dump_json() for run in task_runs), *(a.model_dump_json() for a in artifacts)])


def test_flow_with_gated_model_publishes_to_s3_and_leaks_no_secret(tmp_path: Path, hub_root: Path,
                                                                  s3_server: SeaweedS3, prefect_api) -> None:
    from prefect.blocks.system import Secret
    from prefect_aws import AwsClientParameters, AwsCredentials

    from flows.finetune import finetune
    from peftpipe.stores import open_store
    from peftpipe.artifacts_s3 import S3Access
    from peftpipe.spec import S3StoreSpec

    token = "hf_e2e_" + secrets.token_hex(12)
    Secret(value=token).save("e2e-hf-token", overwrite=True)
    env = s3_server.env
    AwsCredentials(aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                   region_name=env["AWS_DEFAULT_REGION"],
                   aws_client_parameters=AwsClientParameters(endpoint_url=s3_server.endpoint),
                   ).save("e2e-seaweed", overwrite=True)
    mirror = MirrorRoot(hub_root, gated_tokens={TINY_REPO_ID: token})
    with serve_mirror(mirror) as endpoint:
        spec = write_spec(tmp_path, {
            "model.endpoint": endpoint,
            "model.cache_dir": str(tmp_path / "hf-cache"),
            "model.token_secret": "e2e-hf-token",
            "workdir": str(tmp_path / "runs"),
            "artifacts.store": f"s3://{BUCKET}/e2e",
            "artifacts.s3": {"addressing_style": "path", "credentials_block": "e2e-seaweed"},
            "train.max_steps": 6,
            "train.checkpoint_every": 5,
        })
        state = finetune(spec_path=str(spec), run_id="e2e-s3", return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    summary = state.result()
    assert summary["manifest_url"] == f"s3://{BUCKET}/e2e/e2e-s3/manifest.json"

    store = open_store(f"s3://{BUCKET}/e2e", S3StoreSpec(addressing_style="path"),
                       S3Access(session=s3_server.session(), endpoint_url=s3_server.endpoint))
    manifest = store.read_manifest("e2e-s3")
    keys = {obj["key"] for obj in manifest["objects"]}
    assert {"adapter/adapter_model.safetensors", "base_model.json", "evaluate/predictions.jsonl",
            "evaluate/metrics.json", "logs/finetune/attempt-1.log"} <= keys
    assert manifest["base_model"]["repo_id"] == TINY_REPO_ID and len(manifest["base_model"]["commit_sha"]) == 40
    stored_text = [json.dumps(manifest)]
    for obj in manifest["objects"]:
        copy = tmp_path / "check" / obj["key"]
        copy.parent.mkdir(parents=True, exist_ok=True)
        store.download("e2e-s3", obj["key"], copy)
        data = copy.read_bytes()
        assert hashlib.sha256(data).hexdigest() == obj["sha256"] and len(data) == obj["size"]
        stored_text.append(data.decode("utf-8", errors="replace"))

    secret_key = env["AWS_SECRET_ACCESS_KEY"]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "check" not in p.relative_to(tmp_path).parts]
    assert len(written) > 20
    for path in written:
        data = path.read_bytes()
        assert token.encode() not in data and secret_key.encode() not in data, f"a secret leaked into {path}"
    for text in [*stored_text, _everything_prefect_kept(state.state_details.flow_run_id)]:
        assert token not in text and secret_key not in text
