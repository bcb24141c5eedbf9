"""The base of every run spec section, in a module of its own so that each section's module can use it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for every spec section: unknown keys are errors.

    Lax typing is kept on purpose: YAML reads ``1e-4`` as a string, and refusing it would
    punish a spelling every training recipe uses.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)
