"""The ``s3://bucket/prefix`` artifact store, through boto3's transfer manager.

- Files above ``part_size_mb`` go up in parts, ``max_concurrency`` at a time.
- Every object is sent with ``ChecksumAlgorithm=SHA256``: the server recomputes each part's
  SHA-256 and rejects a mismatch (SeaweedFS 4.48 answers ``BadDigest``). A multipart object's
  S3 checksum is a checksum of part checksums, so the whole file's sha256 also travels as user
  metadata (``x-amz-meta-sha256``); it makes uploads idempotent (an object with the same
  sha256 and size is not sent again) and the manifest's sha256 is checked after download.
- Requests are retried by botocore (standard mode: connection errors, throttling, 5xx) with
  exponential backoff, ``max_attempts`` per request.
- Credentials come in as a boto3 session built by the caller (the Prefect layer resolves
  blocks), or from boto3's default chain (the AWS environment). They are never logged or
  part of a message.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftpipe.artifacts import (
    MANIFEST, ArtifactStoreError, Progress, StoredObject, StoreUnavailable, checked_location, sha256_file,
)
from peftpipe.manifests import checked_manifest
from peftpipe.safe_names import check_run_id, is_run_id
from peftpipe.spec import S3StoreSpec

MIB = 1 << 20
SHA256_KEY = "sha256"  # user metadata key: x-amz-meta-sha256
AWS_ENVIRONMENT = "the AWS environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)"

# Error codes S3 answers for credentials, and what each means to the person fixing them.
_CREDENTIAL_CODES = {
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "InvalidAccessKeyId": "the access key id is unknown to the server",
    "AccessDenied": "the credentials lack permission",
    "403": "the request was refused (403)",
    "InvalidToken": "the session token is invalid",
    "ExpiredToken": "the session token has expired",
}


@dataclass(frozen=True)
class S3Access:
    """How to authenticate: a boto3 session (from a Prefect block) or boto3's default chain."""

    session: Any = None
    source: str = AWS_ENVIRONMENT  # for messages: where the credentials come from
    endpoint_url: str | None = None  # the block's endpoint; the spec's endpoint_url wins


class S3ArtifactStore:
    """Objects under ``s3://bucket/prefix/<run_id>/``, manifest last."""

    def __init__(self, bucket: str, prefix: str, settings: S3StoreSpec | None = None,
                 access: S3Access | None = None, on_progress: Progress | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.settings = settings or S3StoreSpec()
        self.access = access or S3Access()
        self.endpoint = self.settings.endpoint_url or self.access.endpoint_url
        self.on_progress = on_progress
        part = self.settings.part_size_mb * MIB
        self.transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                                       max_concurrency=self.settings.max_concurrency)
        config = Config(
            retries={"mode": "standard", "max_attempts": self.settings.max_attempts},
            s3={"addressing_style": self.settings.addressing_style},
            # One pooled connection per transfer thread, or threads wait for each other.
            max_pool_connections=max(10, self.settings.max_concurrency + 2),
        )
        session = self.access.session or boto3.session.Session()
        self.client = session.client("s3", endpoint_url=self.endpoint, region_name=self.settings.region,
                                     config=config)

    @classmethod
    def from_url(cls, url: str, settings: S3StoreSpec | None = None, access: S3Access | None = None,
                 on_progress: Progress | None = None) -> S3ArtifactStore:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return cls(bucket, prefix, settings, access, on_progress)

    def key_for(self, run_id: str, key: str = "") -> str:
        checked_location(run_id, key)
        return "/".join(part for part in (self.prefix, run_id, key) if part)

    def url(self, run_id: str, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.key_for(run_id, key)}"

    def check(self) -> None:
        with self._errors(f"s3://{self.bucket}/{self.prefix}"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

    def put_file(self, run_id: str, key: str, source: Path) -> StoredObject:
        size, sha256 = source.stat().st_size, sha256_file(source)
        stored = self._head(run_id, key)
        if stored and stored["ContentLength"] == size and stored.get("Metadata", {}).get(SHA256_KEY) == sha256:
            return StoredObject(key, size, sha256, transferred=False)
        extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {SHA256_KEY: sha256}}
        with self._errors(self.url(run_id, key)):
            self.client.upload_file(str(source), self.bucket, self.key_for(run_id, key), ExtraArgs=extra,
                                    Config=self.transfer, Callback=self._progress(key, size))
        return StoredObject(key, size, sha256)

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        check_run_id(run_id)
        body = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
        with self._errors(self.url(run_id, MANIFEST)):
            self.client.put_object(Bucket=self.bucket, Key=self.key_for(run_id, MANIFEST), Body=body,
                                   ContentType="application/json", ChecksumAlgorithm="SHA256")
        return self.url(run_id, MANIFEST)

    def read_manifest(self, run_id: str) -> dict[str, Any] | None:
        check_run_id(run_id)
        with self._errors(self.url(run_id, MANIFEST)):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self.key_for(run_id, MANIFEST))
            except self.client.exceptions.NoSuchKey:
                return None
            content = response["Body"].read()
        return checked_manifest(run_id, content, self.url(run_id, MANIFEST))

    def list_runs(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        runs: list[str] = []
        with self._errors(f"s3://{self.bucket}/{base}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=base, Delimiter="/"):
                runs += [entry["Prefix"][len(base):].rstrip("/") for entry in page.get("CommonPrefixes", [])]
        # A prefix that is not a run id (the store's own records, or a hostile name) is not a run.
        return sorted(run for run in runs if is_run_id(run))

    def read_bytes(self, run_id: str, key: str) -> bytes | None:
        if self._head(run_id, key) is None:
            return None
        with self._errors(self.url(run_id, key)):
            return self.client.get_object(Bucket=self.bucket, Key=self.key_for(run_id, key))["Body"].read()

    def download(self, run_id: str, key: str, dest: Path) -> None:
        stored = self._head(run_id, key)
        if stored is None:
            raise ArtifactStoreError(f"{self.url(run_id, key)} is listed in the manifest but missing from the store.")
        with self._errors(self.url(run_id, key)):
            self.client.download_file(self.bucket, self.key_for(run_id, key), str(dest), Config=self.transfer,
                                      Callback=self._progress(key, stored["ContentLength"]))

    def _head(self, run_id: str, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        with self._errors(self.url(run_id, key)):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self.key_for(run_id, key))
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def _progress(self, key: str, total: int) -> Any:
        if self.on_progress is None:
            return None
        done, lock, report = 0, threading.Lock(), self.on_progress

        def advance(amount: int) -> None:  # called from the transfer threads
            nonlocal done
            with lock:
                done += amount
                now = done
            report(key, now, total)

        return advance

    @contextmanager
    def _errors(self, target: str) -> Iterator[None]:
        """Turn botocore's exceptions into messages that name the fix (and no secret)."""
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import (
            BotoCoreError, ClientError, ConnectionError as BotoConnectionError, NoCredentialsError,
        )

        try:
            yield
        except (S3UploadFailedError, S3TransferFailedError) as error:
            cause = error.__cause__
            if isinstance(cause, (ClientError, BotoCoreError)):
                raise self._explain(cause, target) from None
            raise StoreUnavailable(f"{target}: transfer failed ({error}).") from None
        except NoCredentialsError:
            raise ArtifactStoreError(
                f"{target}: no AWS credentials found. Fix: set artifacts.s3.credentials_block to a prefect-aws"
                f" AwsCredentials block, or provide {AWS_ENVIRONMENT} in the worker's environment."
            ) from None
        except (ClientError, BotoConnectionError, BotoCoreError) as error:
            raise self._explain(error, target) from None

    def _explain(self, error: Exception, target: str) -> ArtifactStoreError:
        from botocore.exceptions import ClientError

        where = f"at {self.endpoint}" if self.endpoint else "on AWS S3"
        if not isinstance(error, ClientError):
            return StoreUnavailable(
                f"{target}: the S3 endpoint {where} did not answer after {self.settings.max_attempts} attempts"
                f" ({type(error).__name__}). Fix: check that it is up and artifacts.s3.endpoint_url."
            )
        code = str(error.response.get("Error", {}).get("Code", "?"))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _CREDENTIAL_CODES:
            return ArtifactStoreError(
                f"{target}: S3 {where} refused the credentials from {self.access.source}:"
                f" {_CREDENTIAL_CODES[code]} ({code}). Fix: correct those credentials."
            )
        if code == "NoSuchBucket":
            return ArtifactStoreError(
                f"{target}: bucket {self.bucket!r} does not exist {where}. Fix: create it, or correct artifacts.store."
            )
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
            return StoreUnavailable(f"{target}: S3 {where} kept failing ({code}, HTTP {status}) after"
                                    f" {self.settings.max_attempts} attempts. Fix: retry when it is healthy.")
        return ArtifactStoreError(f"{target}: S3 {where} answered {code} (HTTP {status}).")
