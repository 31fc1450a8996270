"""A fake Hugging Face Hub on a real loopback socket, for `personaloom push` tests.

It answers just the routes `huggingface_hub` 2.4.0 calls for `HfApi.create_repo` + `create_branch` +
`upload_folder` (and `repo_info`/`whoami`, its fallbacks), and keeps what was committed in memory:

    POST /api/repos/create                      {"name", "organization", "visibility", "type"}
    POST /api/validate-yaml                     the README.md card's metadata (upload_folder checks it)
    POST /api/{type}s/{owner}/{name}/preupload/{rev}   every file "regular": inline in the commit
    POST /api/{type}s/{owner}/{name}/commit/{rev}      NDJSON: a header, then one base64 "file" each
    POST /api/{type}s/{owner}/{name}/branch/{branch}
    GET  /api/{type}s/{owner}/{name}[/revision/{rev}]
    GET  /api/whoami-v2

With `hf_xet` installed, 2.4.0's `upload_folder` runs its pipelined upload: a file the preupload answers
"lfs" goes to xet storage (a token from /xet-write-token, then a CAS server). Answering "regular" for
every file keeps both xet and LFS out; an `lfsFile` line in a commit is refused (400), so a test notices
if the library ever takes that path. Point the library here with `HF_ENDPOINT=fake.base_url` (read when
`huggingface_hub` is imported).

Usage::

    with FakeHub() as hub:
        env = {"HF_ENDPOINT": hub.base_url, "HF_TOKEN": "hf_test"}
        ...
        hub.files["me/demo"]["README.md"]  # bytes
        hub.authorizations                  # every Authorization header received
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub", "HubRepo"]


@dataclass
class HubRepo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict[str, Any]] = field(default_factory=list)  # {"oid", "revision", "summary", "paths"}


class FakeHub:
    """The fake Hub. `fail`: answer every request with this HTTP status (e.g. 500); `fail_on`: only the
    requests whose path holds this text (e.g. "/commit/"). `token`: when set, any other Bearer token is
    refused with 401, as the Hub does."""

    def __init__(
        self, *, fail: int | None = None, fail_on: str = "", token: str | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.fail, self.fail_on, self.token = fail, fail_on, token
        self.host, self.port = host, 0
        self.repos: dict[str, HubRepo] = {}
        self.authorizations: list[str | None] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def files(self) -> dict[str, dict[str, bytes]]:
        """The files of each repo's main branch, by repo id and path."""
        return {rid: r.branches["main"] for rid, r in self.repos.items()}

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-hub")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- routes: (status, JSON body)

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append((method, path))
            auth = headers.get("Authorization")
            self.authorizations.append(auth)
        if self.fail is not None and self.fail_on in path:
            return self.fail, {"error": f"fake hub: failing with {self.fail} as configured"}
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts == ["api", "whoami-v2"]:
            return self._auth(auth) or (200, {"type": "user", "name": "me", "orgs": []})
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._auth(auth) or self._create(json.loads(body))
        if len(parts) >= 4 and parts[0] == "api" and parts[1].endswith("s"):
            repo_type, repo_id, rest = parts[1][:-1], f"{parts[2]}/{parts[3]}", parts[4:]
            repo = self.repos.get(repo_id)
            if repo is None or repo.repo_type != repo_type:
                return 404, {"error": "Repository not found"}
            if method == "POST" and (denied := self._auth(auth)):
                return denied
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo, rest[1], json.loads(body))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo, rest[1], body)
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                if rest[1] in repo.branches:
                    return 409, {"error": "Reference already exists"}
                repo.branches[rest[1]] = dict(repo.branches["main"])
                return 200, {}
            if method == "GET" and (not rest or (len(rest) == 2 and rest[0] == "revision")):
                revision = rest[1] if rest else "main"
                if revision not in repo.branches:
                    return 404, {"error": "Invalid rev id"}
                return 200, self._info(repo, revision)
        return 404, {"error": f"fake hub: no route {method} {path}"}

    def _auth(self, auth: str | None) -> tuple[int, dict[str, Any]] | None:
        if not auth or not auth.startswith("Bearer "):
            return 401, {"error": "Invalid username or password."}
        if self.token is not None and auth != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        return None

    def _create(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        repo_id = f"{payload.get('organization') or 'me'}/{payload['name']}"
        repo_type = payload.get("type") or "model"
        url = f"{self.base_url}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        with self.lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": url}
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.repos[repo_id] = HubRepo(repo_id, repo_type, private)
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def _preupload(self, repo: HubRepo, revision: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if revision not in repo.branches:
            return 404, {"error": "Invalid rev id"}
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for f in payload["files"]
        ]
        return 200, {"files": files, "commitOid": self._head(repo, revision)}

    def _commit(self, repo: HubRepo, revision: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if revision not in repo.branches:
            return 404, {"error": "Invalid rev id"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((ln["value"] for ln in lines if ln["key"] == "header"), None)
        if header is None:
            return 400, {"error": "fake hub: the commit has no header line"}
        added: dict[str, bytes] = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return 400, {"error": f"fake hub: {value['path']}: not base64"}
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("lfsFile", "deletedFile", "deletedFolder"):
                return 400, {"error": f"fake hub: {key} is not implemented (every file is regular here)"}
        with self.lock:
            tree = repo.branches[revision]
            tree.update(added)
            oid = hashlib.sha1(
                json.dumps(
                    [header, sorted((p, hashlib.sha1(b).hexdigest()) for p, b in tree.items())]
                ).encode()
                + str(len(repo.commits)).encode()
            ).hexdigest()
            repo.commits.append(
                {"oid": oid, "revision": revision, "summary": header.get("summary"), "paths": sorted(added)}
            )
        url = f"{self.base_url}/{repo.repo_type}s/{repo.repo_id}/commit/{oid}"
        return 200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None, "success": True}

    def _head(self, repo: HubRepo, revision: str) -> str:
        oids = [c["oid"] for c in repo.commits if c["revision"] == revision]
        return oids[-1] if oids else "0" * 40

    def _info(self, repo: HubRepo, revision: str) -> dict[str, Any]:
        return {
            "id": repo.repo_id,
            "sha": self._head(repo, revision),
            "private": repo.private,
            "siblings": [{"rfilename": p} for p in sorted(repo.branches[revision])],
        }


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: httpx reuses its connections

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.hub.handle(self.command, urlsplit(self.path).path, self.headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-Id", "fake-hub")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stderr
        pass
