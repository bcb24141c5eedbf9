"""The artifact store a group publishes runs to, named once in Prefect instead of in every spec."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from prefect.blocks.core import Block


class ArtifactStore(Block):
    """Where runs are published: a directory or an S3 bucket and how to reach it.

    Credentials are not here: ``credentials_block`` names the prefect-aws block that holds them,
    so this block can be shown and copied freely.

    Example:
        ```python
        from blocks.artifact_store import ArtifactStore

        store = ArtifactStore.load("BLOCK_NAME")
        print(store.url)
        ```
    """

    _block_type_name = "Peftpipe Artifact Store"
    _block_type_slug = "peftpipe-artifact-store"
    _description = "The file:// directory or s3:// bucket and prefix that runs are published to."

    url: str = Field(description="file://DIRECTORY or s3://BUCKET/PREFIX.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:8333.")
    region: str | None = Field(None, description="S3 region name.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="path for most S3-compatible servers (the bucket in the path, not the host).")
    credentials_block: str | None = Field(
        None, description="The prefect-aws block with the S3 credentials: NAME or SLUG/NAME.")

    def artifacts_section(self) -> dict[str, Any]:
        """The block as the run spec's ``artifacts`` mapping."""
        s3 = {"endpoint_url": self.endpoint_url, "region": self.region, "addressing_style": self.addressing_style,
              "credentials_block": self.credentials_block}
        return {"store": self.url, "s3": {k: v for k, v in s3.items() if v is not None}}
