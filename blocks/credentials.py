"""Resolve Prefect blocks into the plain values the core takes (a token, a boto3 session).

Secrets leave their block here, in the process that uses them, and go straight into a core
call: never into a Prefect parameter, a log line, a job script or an artifact.
"""

from __future__ import annotations

from peftpipe.artifacts_s3 import S3Access
from peftpipe.hub.fetch import DEFAULT_TOKEN_HINT
from peftpipe.spec import LoadedSpec

AWS_SLUGS = ("aws-credentials", "minio-credentials", "s3-bucket")


def hub_token(secret_name: str | None) -> tuple[str | None, str]:
    """The Hub token from the Secret block ``secret_name`` if it exists, and where it came from.

    ``None`` as the token lets huggingface_hub read ``HF_TOKEN`` from the environment itself.
    """
    from prefect.blocks.system import Secret

    if secret_name is None:
        return None, DEFAULT_TOKEN_HINT
    hint = f"the Prefect Secret block {secret_name!r} (or {DEFAULT_TOKEN_HINT})"
    try:
        secret = Secret.load(secret_name, _sync=True)
    except ValueError:  # no Secret of that name: a Hugging Face Token block, else the environment
        from blocks.hf_token import HuggingFaceToken

        try:
            block = HuggingFaceToken.load(secret_name, _sync=True)
        except ValueError:
            return None, hint
        return block.token.get_secret_value(), f"the Hugging Face Token block {secret_name!r}"
    return str(secret.get()), hint


def s3_access(block_ref: str | None) -> S3Access:
    """A boto3 session from a prefect-aws block (``NAME`` or ``SLUG/NAME``), or the AWS environment."""
    if block_ref is None:
        return S3Access()
    from prefect.blocks.core import Block
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket  # noqa: F401 - registers the block types

    slug, _, name = block_ref.rpartition("/")
    slug = slug or "aws-credentials"
    if slug not in AWS_SLUGS:
        raise ValueError(f"artifacts.s3.credentials_block {block_ref!r}: the block type must be one of"
                         f" {', '.join(AWS_SLUGS)}, e.g. aws-credentials/{name}.")
    try:
        block = Block.load(f"{slug}/{name}", _sync=True)
    except ValueError:
        raise ValueError(f"artifacts.s3.credentials_block: there is no {slug} block named {name!r}."
                         f" Fix: create it (prefect block create {slug}) or correct the name.") from None
    if isinstance(block, S3Bucket):
        block = block.credentials
    endpoint = block.aws_client_parameters.endpoint_url if block.aws_client_parameters else None
    return S3Access(session=block.get_boto3_session(), source=f"the {slug} block {name!r}", endpoint_url=endpoint)


def store_access(loaded: LoadedSpec) -> S3Access | None:
    """The credentials of the spec's artifact store: its S3 block's session, or None for a file store."""
    artifacts = loaded.spec.artifacts
    return s3_access(artifacts.s3.credentials_block) if artifacts.store.startswith("s3://") else None
