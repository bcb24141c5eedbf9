"""The Hugging Face Hub token, kept in Prefect so it never appears in a spec, a parameter or a job script."""

from __future__ import annotations

from pydantic import Field, SecretStr
from prefect.blocks.core import Block


class HuggingFaceToken(Block):
    """A Hub access token for gated or private models.

    The fetch task looks up the block named by the spec's ``model.token_secret`` (default
    ``hf-token``): a Prefect ``Secret`` of that name, or else this block.

    Example:
        ```python
        from blocks.hf_token import HuggingFaceToken

        token = HuggingFaceToken.load("BLOCK_NAME").token.get_secret_value()
        ```
    """

    _block_type_name = "Hugging Face Token"
    _block_type_slug = "hugging-face-token"
    _description = "A Hugging Face Hub access token (stored encrypted, shown masked)."

    token: SecretStr = Field(description="The access token (hf_...); read permission is enough.")
