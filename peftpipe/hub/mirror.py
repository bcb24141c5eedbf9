"""A Hub-compatible HTTP server over a directory of model repositories (read-only unless made writable).

Clusters without internet keep a mirror of the repositories they use; this server lets
``huggingface_hub`` (and so the pipeline's real fetch code) download from such a mirror
with ``HF_ENDPOINT=http://host:port``. It answers the calls ``snapshot_download`` makes:
repository info with the commit sha, the recursive file tree, and file ``resolve`` with
the ``X-Repo-Commit`` and ``ETag`` headers, ``HEAD`` and byte ranges (so interrupted
downloads resume). For tests, it can drop a connection in the middle of a file once, stall
(accept requests and never answer), or send more bytes than a file's listed size, and it
records the requests it served. Made ``writable``, it also takes ``create_repo`` and
``upload_folder`` pushes (``peftpipe/hub/mirror_writes.py``), with ``write_token`` required if set.

Layout of ``root``: ``<root>/<owner>/<name>/<files...>``. The commit sha of a repository is
derived from the paths and contents of its files, so it changes whenever a file does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_CHUNK = 1 << 20
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<rest>/.*)?)?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class RepoFileEntry:
    path: str
    size: int
    sha256: str


@dataclass
class MirrorRoot:
    """The repositories under ``root`` and, for gated ones, the token each requires."""

    root: Path
    gated_tokens: dict[str, str] = field(default_factory=dict)
    # "<repo_id>/<file>" -> byte offset: the next download of that file stops there, once.
    interrupt_once: dict[str, int] = field(default_factory=dict)
    # Test faults: request paths starting with one of these get no answer until ``release`` is set;
    # "<repo_id>/<file>" -> extra bytes sent after the file, with no Content-Length to stop the client.
    stall_paths: tuple[str, ...] = ()
    oversend: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    # The latest requests served (method, path, Range), bounded for a long-running mirror.
    requests: deque[tuple[str, str, str | None]] = field(default_factory=lambda: deque(maxlen=1000))
    writable: bool = False
    write_token: str | None = None
    _cache: dict[str, tuple[tuple, list[RepoFileEntry]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def repo_dir(self, repo_id: str) -> Path | None:
        path = (self.root / repo_id).resolve()
        if self.root.resolve() not in path.parents or not path.is_dir():
            return None
        return path

    def files(self, repo_id: str) -> list[RepoFileEntry]:
        repo = self.repo_dir(repo_id)
        assert repo is not None
        paths = sorted(p for p in repo.rglob("*") if p.is_file())
        stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
        with self._lock:
            cached = self._cache.get(repo_id)
            if cached and cached[0] == stamp:
                return cached[1]
        entries = [
            RepoFileEntry(p.relative_to(repo).as_posix(), p.stat().st_size, _sha256(p)) for p in paths
        ]
        with self._lock:
            self._cache[repo_id] = (stamp, entries)
        return entries

    def record(self, method: str, path: str, byte_range: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, byte_range))

    def take_interrupt(self, file_id: str) -> int | None:
        with self._lock:
            return self.interrupt_once.pop(file_id, None)

    def commit_sha(self, repo_id: str) -> str:
        digest = hashlib.sha1()
        for entry in self.files(repo_id):
            digest.update(f"{entry.path}\0{entry.sha256}\n".encode())
        return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    mirror: MirrorRoot  # set on the subclass made by make_server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(send_body=False)

    def do_POST(self) -> None:  # noqa: N802
        from peftpipe.hub import mirror_writes

        path = unquote(urlsplit(self.path).path)
        self.mirror.record(self.command, path, None)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = mirror_writes.WRITE_ROUTES.match(path)
        if match is None or not self.mirror.writable:
            self._error(HTTPStatus.FORBIDDEN if match else HTTPStatus.NOT_FOUND, "ReadOnlyMirror",
                        f"this mirror takes no writes ({path})", True)
            return
        token = self.mirror.write_token
        if token is not None and not hmac.compare_digest(self.headers.get("Authorization") or "", f"Bearer {token}"):
            self._error(HTTPStatus.UNAUTHORIZED, "Unauthorized", "a write needs the mirror's token", True)
            return
        endpoint = f"http://{self.headers.get('Host')}"
        if path == "/api/validate-yaml":
            status, answer = HTTPStatus.OK, {"errors": [], "warnings": []}
        elif path == "/api/repos/create":
            with self.mirror._lock:
                status, answer = mirror_writes.create_repo(self.mirror.root, json.loads(body or b"{}"), endpoint)
        elif self.mirror.repo_dir(match["repo"]) is None:
            status, answer = HTTPStatus.NOT_FOUND, {"error": f"Repository {match['repo']} not found."}
        elif match["kind"] == "preupload":
            status, answer = mirror_writes.preupload(json.loads(body or b"{}"))
        else:
            with self.mirror._lock:
                status, answer = mirror_writes.commit(self.mirror.repo_dir(match["repo"]), body)  # type: ignore[arg-type]
            if status == HTTPStatus.OK:
                sha = self.mirror.commit_sha(match["repo"])
                answer = {"commitUrl": f"{endpoint}/{match['repo']}/commit/{sha}", "commitOid": sha,
                          "pullRequestUrl": None}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _route(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.mirror.record(self.command, path, self.headers.get("Range"))
        if any(path.startswith(prefix) for prefix in self.mirror.stall_paths):
            self.mirror.release.wait()  # a Hub that took the connection and went quiet
            self.close_connection = True
            return
        if match := _API.match(path):
            self._api(match["repo"], match["kind"], match["rev"] or "main", send_body)
        elif match := _RESOLVE.match(path):
            self._resolve(match["repo"], match["rev"], match["path"], send_body)
        else:
            self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", f"no route for {path}", send_body)

    def _authorised(self, repo_id: str, send_body: bool) -> bool:
        token = self.mirror.gated_tokens.get(repo_id)
        if token is None or self.headers.get("Authorization") == f"Bearer {token}":
            return True
        self._error(HTTPStatus.UNAUTHORIZED, "GatedRepo", f"Access to {repo_id} is restricted.", send_body)
        return False

    def _known_revision(self, repo_id: str, revision: str, send_body: bool) -> str | None:
        if self.mirror.repo_dir(repo_id) is None:
            self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Repository {repo_id} not found.", send_body)
            return None
        if not self._authorised(repo_id, send_body):
            return None
        sha = self.mirror.commit_sha(repo_id)
        if revision not in ("main", sha):
            self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}", send_body)
            return None
        return sha

    def _api(self, repo_id: str, kind: str | None, revision: str, send_body: bool) -> None:
        sha = self._known_revision(repo_id, revision, send_body)
        if sha is None:
            return
        files = self.mirror.files(repo_id)
        if kind == "tree":
            body = [{"type": "file", "path": f.path, "size": f.size, "oid": f.sha256[:40]} for f in files]
        else:
            body = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": False,
                "gated": repo_id in self.mirror.gated_tokens,
                "siblings": [{"rfilename": f.path, "size": f.size} for f in files],
            }
        payload = json.dumps(body).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if send_body:
            self.wfile.write(payload)

    def _resolve(self, repo_id: str, revision: str, file_path: str, send_body: bool) -> None:
        sha = self._known_revision(repo_id, revision, send_body)
        if sha is None:
            return
        entry = next((f for f in self.mirror.files(repo_id) if f.path == file_path), None)
        if entry is None:
            self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{file_path} not in {repo_id}", send_body)
            return
        start = _range_start(self.headers.get("Range"))
        status = HTTPStatus.PARTIAL_CONTENT if start else HTTPStatus.OK
        extra = self.mirror.oversend.get(f"{repo_id}/{file_path}") if send_body else None
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if extra is None:
            self.send_header("Content-Length", str(entry.size - start))
        else:  # the body ends when the connection does
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.sha256}"')
        self.send_header("X-Repo-Commit", sha)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{entry.size - 1}/{entry.size}")
        self.end_headers()
        if not send_body:
            return
        stop_at = self.mirror.take_interrupt(f"{repo_id}/{file_path}")
        with (self.mirror.repo_dir(repo_id) / file_path).open("rb") as handle:  # type: ignore[operator]
            handle.seek(start)
            if stop_at is not None:
                self.wfile.write(handle.read(max(stop_at - start, 0)))
                self.wfile.flush()
                # The client sees a body shorter than Content-Length, as after a network failure.
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            try:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    self.wfile.write(chunk)
                for sent in range(0, extra or 0, _CHUNK):
                    self.wfile.write(bytes(min(_CHUNK, extra - sent)))
            except (BrokenPipeError, ConnectionResetError):
                if extra is None:
                    raise  # only the oversending fault expects the client to hang up

    def _error(self, status: HTTPStatus, code: str, message: str, send_body: bool) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if send_body:
            self.wfile.write(payload)


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match[1]) if match else 0


class MirrorServer(ThreadingHTTPServer):
    """Closing it also drops open keep-alive connections, as an outage would."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        # Before binding: a failed bind calls server_close, which needs them.
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:  # noqa: ANN001 - socketserver's signature
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # noqa: ANN001
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        self.RequestHandlerClass.mirror.release.set()  # type: ignore[attr-defined] - stalled handlers end
        super().server_close()
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def make_server(mirror: MirrorRoot, host: str = "127.0.0.1", port: int = 0) -> MirrorServer:
    """A server for ``mirror``; port 0 picks a free port (read it from ``server.server_address``)."""
    handler = type("MirrorHandler", (_Handler,), {"mirror": mirror})
    return MirrorServer((host, port), handler)
