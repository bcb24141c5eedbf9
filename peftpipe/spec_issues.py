"""What is wrong with a run spec: one :class:`SpecIssue` per problem, raised together as :class:`SpecError`.

A leaf module, so that the spec checks (``validation.py``) and every engine's renderers name
problems the same way without importing each other. An engine that finds a value it cannot
render raises ``SpecError.single(field, problem, fix)``; the validator collects the issues.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecIssue:
    """One problem: the spec field, what is wrong with it, and how to fix it."""

    field: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}. Fix: {self.fix}."


class SpecError(ValueError):
    """A spec that must not run; ``issues`` lists every problem found.

    A ``ValueError``, so that callers rendering a stage (``peftpipe render``) report it as bad
    input like any other value they cannot use.
    """

    def __init__(self, issues: list[SpecIssue]):
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))

    @classmethod
    def single(cls, field: str, problem: str, fix: str) -> SpecError:
        return cls([SpecIssue(field, problem, fix)])
