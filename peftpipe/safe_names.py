"""Names that come from outside and become paths: run ids, store keys, Hub repo ids and revisions.

A shared bucket, a deployment parameter or a spec written by someone else can hold any text;
each rule here says what a well-formed name looks like, and everything else is refused before
it is joined to a directory, an S3 prefix or a URL. One rule per kind of name, used at every
entry point (CLI options, flow parameters, the store API, what is read back from a store).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

# A spec name: lowercase letters, digits and dashes, starting with a letter or digit (max 63).
SPEC_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
# A run id: a spec name plus a suffix in the same alphabet (``<name>-<UTC time>``, ``<run>-eval-<time>``).
# No `_` (the store's own records start with it), no `.` (so no `..`), no `/`; `\Z`: `$` would let a final newline in.
RUN_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,159}\Z")
RUN_ID_RULE = "lowercase letters, digits and dashes, starting with a letter or digit, at most 160 characters"
# The store's own top-level records (``_promoted``, ``_retune``): `_` and a slug; never a run.
STORE_RECORD_PATTERN = re.compile(r"^_[a-z][a-z0-9-]{0,62}\Z")

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_KEY_LENGTH = 1024  # S3's limit on a whole key

# Git's ref-name rules (git check-ref-format) for branches and tags, or a commit sha.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


class UnsafeName(ValueError):
    """A name from outside that must not become a path; the message names it, where it came from and the rule."""


def is_run_id(text: object) -> bool:
    return isinstance(text, str) and RUN_ID_PATTERN.match(text) is not None


def check_run_id(run_id: object, where: str = "run id") -> str:
    """``run_id`` if it follows the run-id rule, else :class:`UnsafeName` naming ``where``."""
    if not is_run_id(run_id):
        raise UnsafeName(f"{where} {run_id!r} is not a valid run id. Fix: use {RUN_ID_RULE}"
                         " (e.g. my-spec-20260101-120000).")
    return run_id  # type: ignore[return-value]


def check_store_prefix(prefix: object) -> str:
    """A store's top-level name: a run id, or one of the store's own record prefixes."""
    if isinstance(prefix, str) and STORE_RECORD_PATTERN.match(prefix):
        return prefix
    return check_run_id(prefix, "store run id")


def key_problem(key: object) -> str | None:
    """Why ``key`` is not a safe relative object key (``adapter/adapter_model.safetensors``), or None."""
    if not isinstance(key, str):
        return f"is a {type(key).__name__}, not text"
    if not key:
        return "is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"is longer than {MAX_KEY_LENGTH} characters"
    if "\x00" in key:
        return "holds a NUL character"
    if _CONTROL.search(key):
        return "holds a control character"
    if "\\" in key:
        return "holds a backslash"
    if key.startswith("/"):
        return "is an absolute path"
    parts = key.split("/")
    if any(_DRIVE.match(part) for part in parts):  # a drive anywhere: joined on Windows, it restarts the path
        return "has a drive letter (C:)"
    if any(part == "" for part in parts):
        return "has an empty path segment (`//` or a trailing `/`)"
    if any(part in (".", "..") for part in parts):
        return "has a `.` or `..` segment"
    return None


def check_store_key(run_id: str, key: object) -> str:
    """``key`` if it is a safe relative key, else :class:`UnsafeName` naming the run and the key."""
    problem = key_problem(key)
    if problem is not None:
        raise UnsafeName(f"run {run_id!r}: object key {key!r} {problem}; it could point outside the run or the"
                         " destination, so nothing was read or written. Fix: keys are relative paths such as"
                         " adapter/adapter_model.safetensors; republish the run or remove the bad entry.")
    return key  # type: ignore[return-value]


def inside(dest: Path, relative: str, run_id: str) -> Path:
    """``dest / relative`` after checking that it resolves inside ``dest`` (symbolic links included)."""
    check_store_key(run_id, relative)
    base = dest.resolve()
    target = (base / PurePosixPath(relative)).resolve()
    if target != base and base not in target.parents:
        raise UnsafeName(f"run {run_id!r}: object key {relative!r} resolves to {target}, outside {base};"
                         " nothing was written. Fix: remove the link or choose another destination.")
    return target


def repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` breaks the Hub's rule for repository ids (huggingface_hub's own check), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        return str(error).split(":")[0].rstrip(".").lower()
    return None


def revision_problem(revision: str) -> str | None:
    """Why ``revision`` is not a branch, tag or commit sha the Hub could have, or None."""
    if not revision:
        return "is empty"
    if _REF_FORBIDDEN.search(revision):
        return "holds `..`, `//`, `@{`, a space, a control character or one of ~^:?*[\\"
    if revision.startswith("/") or revision.endswith(("/", ".", ".lock")) or revision == "@":
        return "starts with `/` or ends with `/`, `.` or `.lock`"
    if any(part.startswith(".") for part in revision.split("/")):
        return "has a segment starting with `.`"
    return None
