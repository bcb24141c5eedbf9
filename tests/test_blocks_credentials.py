"""Prefect blocks resolved into what the core takes: the Hub token and an S3 session."""

from __future__ import annotations

import pytest

from peftpipe.artifacts import ArtifactStoreError
from peftpipe.stores import open_store
from peftpipe.spec import S3StoreSpec
from tests.s3_fixtures import BUCKET, SeaweedS3

pytestmark = pytest.mark.e2e


def test_hub_token_comes_from_the_secret_block_else_the_environment(prefect_api) -> None:
    from prefect.blocks.system import Secret

    from blocks.credentials import hub_token

    Secret(value="hf_from_block").save("test-hub-token", overwrite=True)
    assert hub_token("test-hub-token") == (
        "hf_from_block", "the Prefect Secret block 'test-hub-token' (or HF_TOKEN in the worker's environment)")
    assert hub_token("no-such-token-block") == (
        None, "the Prefect Secret block 'no-such-token-block' (or HF_TOKEN in the worker's environment)")


def test_s3_credentials_from_an_s3_bucket_block_reach_the_store(prefect_api, s3_server: SeaweedS3) -> None:
    from prefect_aws import AwsClientParameters, MinIOCredentials, S3Bucket

    from blocks.credentials import s3_access

    env = s3_server.env
    credentials = MinIOCredentials(minio_root_user=env["AWS_ACCESS_KEY_ID"],
                                   minio_root_password=env["AWS_SECRET_ACCESS_KEY"],
                                   aws_client_parameters=AwsClientParameters(endpoint_url=s3_server.endpoint))
    S3Bucket(bucket_name=BUCKET, credentials=credentials).save("test-bucket", overwrite=True)
    access = s3_access("s3-bucket/test-bucket")
    assert access.endpoint_url == s3_server.endpoint and access.source == "the s3-bucket block 'test-bucket'"
    store = open_store(f"s3://{BUCKET}/blocks", S3StoreSpec(addressing_style="path", region="us-east-1"), access)
    store.check()

    credentials.minio_root_password = "wrong-password-for-test"  # type: ignore[assignment]
    S3Bucket(bucket_name=BUCKET, credentials=credentials).save("test-bucket", overwrite=True)
    denied = open_store(f"s3://{BUCKET}/blocks", S3StoreSpec(addressing_style="path", region="us-east-1"),
                        s3_access("s3-bucket/test-bucket"))
    with pytest.raises(ArtifactStoreError, match="refused the credentials from the s3-bucket block 'test-bucket'"):
        denied.check()


def test_unknown_blocks_name_the_fix(prefect_api) -> None:
    from blocks.credentials import s3_access

    with pytest.raises(ValueError, match="there is no aws-credentials block named 'nope'. Fix: create it"):
        s3_access("nope")
    with pytest.raises(ValueError, match="the block type must be one of aws-credentials, minio-credentials, s3-bucket"):
        s3_access("gcs-bucket/models")
