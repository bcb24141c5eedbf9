"""The write side of the loopback Hub mirror: the calls ``huggingface_hub`` makes to push a folder.

``HfApi.create_repo`` (``POST /api/repos/create``), ``upload_folder`` (``POST /api/validate-yaml`` for
a README.md, ``POST /api/models/<repo>/preupload/<rev>``, then ``POST /api/models/<repo>/commit/<rev>``
with an NDJSON body). The preupload answer asks for every file as a "regular" upload, so file
contents arrive base64-encoded in the commit itself and no LFS or Xet storage is needed. A commit
lands in a staging copy of the repository that replaces it whole, so a reader never sees half a
commit. Paths from the request are checked like any key from outside (no ``..``, absolute, NUL).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from http import HTTPStatus
from pathlib import Path
from typing import Any

from peftpipe.safe_names import key_problem

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
WRITE_ROUTES = re.compile(r"^/api/(?:repos/create|validate-yaml|models/(?P<repo>[^/]+/[^/]+)/"
                          r"(?P<kind>preupload|commit)/(?P<rev>[^/]+))$")

Answer = tuple[HTTPStatus, dict[str, Any]]


def repo_problem(repo_id: str) -> str | None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) and ".." not in p for p in parts):
        return f"{repo_id!r} is not an owner/name repository id"
    return None


def create_repo(root: Path, body: dict[str, Any], endpoint: str) -> Answer:
    repo_id = f"{body.get('organization') or 'user'}/{body.get('name')}"
    if (problem := repo_problem(repo_id)) is not None:
        return HTTPStatus.BAD_REQUEST, {"error": problem}
    repo = root / repo_id
    if repo.is_dir():
        return HTTPStatus.CONFLICT, {"error": f"You already created this model repo: {repo_id}",
                                     "url": f"{endpoint}/{repo_id}"}
    repo.mkdir(parents=True)
    return HTTPStatus.OK, {"url": f"{endpoint}/{repo_id}", "name": repo_id}


def preupload(body: dict[str, Any]) -> Answer:
    files = [{"path": f.get("path"), "uploadMode": "regular", "shouldIgnore": False} for f in body.get("files", [])]
    return HTTPStatus.OK, {"files": files}


def commit(repo: Path, ndjson: bytes) -> Answer:
    """Apply the commit's file additions and deletions to ``repo`` as one replacement of the folder."""
    try:
        items = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
    except ValueError as error:
        return HTTPStatus.BAD_REQUEST, {"error": f"commit body is not NDJSON: {error}"}
    staging = repo.with_name(f".{repo.name}.commit")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(repo, staging)
    try:
        for item in items:
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                continue
            path = value.get("path")
            if (problem := key_problem(path)) is not None:
                return HTTPStatus.BAD_REQUEST, {"error": f"path {path!r} {problem}"}
            target = staging / path
            if key == "file" and value.get("encoding") == "base64":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(value.get("content", "")))
            elif key == "deletedFile":
                target.unlink(missing_ok=True)
            elif key == "deletedFolder":
                shutil.rmtree(target, ignore_errors=True)
            else:
                return HTTPStatus.BAD_REQUEST, {"error": f"unsupported commit operation {key!r} (this mirror"
                                                         " takes regular uploads only)"}
        old = repo.with_name(f".{repo.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(repo, old)
        os.replace(staging, repo)
        shutil.rmtree(old, ignore_errors=True)
        return HTTPStatus.OK, {}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
