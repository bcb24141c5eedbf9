"""The one error the nemo engine's renderers raise: a spec value NeMo would reject or misread."""

from __future__ import annotations


class NemoSpecError(ValueError):
    """Names the spec field, what NeMo would do with it, and how to fix it (like a SpecIssue)."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}.")
