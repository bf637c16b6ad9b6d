"""A local stand-in for the Hugging Face Hub server, and the `fake_hub` pytest fixture that points clients at it.

The server speaks the part of the Hub's HTTP API that huggingface_hub's own client code uses to create repositories,
commit files and download them, so that `HfApi`, `upload_folder`, `create_commit`, `hf_hub_download`,
`snapshot_download` and transformers' `push_to_hub` / `from_pretrained` run unchanged without any real network.
It binds 127.0.0.1 only, keeps repositories in memory and stops at fixture teardown (or, at the latest, after
`MAX_LIFETIME_S`).

Every file is stored and served as a regular git blob: the preupload answer is `uploadMode: "regular"` for every
file, so the client sends contents inline (base64) in the NDJSON commit, and no answer ever carries Xet headers
(`X-Xet-Hash`, ...) or `xetHash`/`lfs` fields, so uploads and downloads stay on plain HTTP even with hf_xet installed.

Use it in a test by asking for the fixture (it is registered for every test by tests/conftest.py):

    def test_push(fake_hub):
        model.push_to_hub("user/tiny")               # any repo id "namespace/name"
        assert "config.json" in fake_hub.repos["user/tiny"]
        reloaded = Model.from_pretrained("user/tiny")

`fake_hub.repos` maps repo id -> {path: bytes} at the head of `main`; `fake_hub.requests` lists the (method, path)
pairs the server received; `fake_hub.unhandled` lists requests it has no answer for (answered 404/501 and logged).
"""

import base64
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
FAKE_TOKEN = "hf_fake"
FAKE_USER = "user"
MAX_BODY_BYTES = 256 * 1024 * 1024  # a request body larger than this is refused (413)
SOCKET_TIMEOUT_S = 30.0  # an idle or stalled connection is dropped after this long
MAX_LIFETIME_S = 900.0  # the server shuts itself down after this long even if teardown never comes
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
TRUE_VALUES = {"1", "true", "True"}


class HubError(Exception):
    """An error answer: HTTP status, message, and the X-Error-Code that huggingface_hub maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class ForeignRequestError(RuntimeError):
    """Raised by the client hook when code under test tries to reach anything but the fake Hub."""


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob, which the Hub uses as ETag and `oid` of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


# --------------------------------------------------------------------------------------------------- repositories


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, bytes]  # the full tree at this commit


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=_now_iso)
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1", ... -> commit sha

    @property
    def url_path(self) -> str:
        return URL_PREFIXES[self.repo_type] + self.repo_id

    def resolve(self, revision: str) -> Commit:
        """The commit a branch name, PR ref or (abbreviated) commit sha points to."""
        name = revision.removeprefix("refs/heads/")
        if name in self.refs:
            return self.commits[self.refs[name]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [commit for sha, commit in self.commits.items() if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def add_commit(self, ref: str, files: dict[str, bytes], title: str, message: str = "") -> Commit:
        parent = self.refs.get(ref)
        tree = sorted((path, git_blob_sha(data)) for path, data in files.items())
        identity = [self.repo_type, self.repo_id, len(self.commits), parent, title, message, tree]
        sha = hashlib.sha1(json.dumps(identity).encode()).hexdigest()
        commit = Commit(sha=sha, parent=parent, title=title, message=message, date=_now_iso(), files=dict(files))
        self.commits[sha] = commit
        self.refs[ref] = sha
        return commit

    def history(self, commit: Commit) -> list[Commit]:
        chain = [commit]
        while chain[-1].parent is not None:
            chain.append(self.commits[chain[-1].parent])
        return chain


class HubState:
    """Everything the server knows, shared by its request threads (guard with `lock`)."""

    def __init__(self, token: str):
        self.token = token
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo")
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
        repo.add_commit("main", {}, "initial commit")
        self.repos[(repo_type, repo_id)] = repo
        return repo


# ------------------------------------------------------------------------------------------------ request parsing


def _read_chunked(stream) -> bytes:
    body = bytearray()
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY_BYTES:
            raise HubError(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
        body += stream.read(size)
        stream.readline()


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a `bytes=` Range header, or None to send the whole file."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if match is None or match.groups() == ("", ""):
        return None
    start, end = match.groups()
    if start == "":
        return max(size - int(end), 0), size - 1
    return int(start), min(int(end), size - 1) if end else size - 1


def _tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
    """Tree listing of the folder `prefix` ("" for the root), as the Hub's tree endpoint returns it."""
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    entries: dict[str, dict] = {}
    for path, data in files.items():
        if not path.startswith(base):
            continue
        parts = path[len(base):].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):
            folder = base + "/".join(parts[:i])
            if folder not in entries:
                entries[folder] = _folder_entry(files, folder)
        if recursive or len(parts) == 1:
            entries[path] = _file_entry(path, data)
    return [entries[path] for path in sorted(entries)]


def _file_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}


def _folder_entry(files: dict[str, bytes], folder: str) -> dict:
    listing = sorted((p, git_blob_sha(d)) for p, d in files.items() if p.startswith(folder + "/"))
    oid = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": folder}


def _is_folder(files: dict[str, bytes], path: str) -> bool:
    return any(p.startswith(path.rstrip("/") + "/") for p in files)


def _apply_commit_lines(files: dict[str, bytes], lines: list[dict]) -> tuple[dict[str, bytes], dict]:
    """The tree after the NDJSON commit operations, and the commit header."""
    files, header = dict(files), {}
    for line in lines:
        key, value = line.get("key"), line.get("value", {})
        if key == "header":
            header = value
        elif key == "file":
            content = value["content"]
            files[value["path"]] = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
        elif key == "deletedFile":
            if files.pop(value["path"], None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
        elif key == "deletedFolder":
            folder = value["path"].rstrip("/") + "/"
            files = {p: d for p, d in files.items() if not p.startswith(folder)}
        elif key == "lfsFile":
            raise HubError(400, "The fake Hub stores regular files only (preupload never asks for LFS/Xet)")
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")
    return files, header


# ------------------------------------------------------------------------------------------------------- handler

_REPO = r"/api/(?P<types>models|datasets|spaces)/(?P<repo_id>[^/]+/[^/]+)"
ROUTES: list[tuple[str, re.Pattern, str]] = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("GET", r"/api/agent-harnesses", "agent_harnesses"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("GET", _REPO + r"(?:/revision/(?P<revision>[^/]+))?", "repo_info"),
        ("GET", _REPO + r"/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", _REPO + r"/paths-info/(?P<revision>[^/]+)", "paths_info"),
        ("POST", _REPO + r"/preupload/(?P<revision>[^/]+)", "preupload"),
        ("POST", _REPO + r"/commit/(?P<revision>[^/]+)", "commit"),
        ("GET", _REPO + r"/commits/(?P<revision>[^/]+)", "list_commits"),
        ("GET", _REPO + r"/refs", "refs"),
        ("POST", _REPO + r"/branch/(?P<branch>[^/]+)", "create_branch"),
        ("DELETE", _REPO + r"/branch/(?P<branch>[^/]+)", "delete_branch"),
        ("GET", _REPO + r"/xet-(?P<kind>read|write)-token/.*", "xet_token"),
        ("GET", r"/(?:(?P<types>datasets|spaces)/)?(?P<repo_id>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)",
         "resolve"),
        ("HEAD", r"/(?:(?P<types>datasets|spaces)/)?(?P<repo_id>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)",
         "resolve"),
    ]
]


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server_version = "FakeHub/1.0"
    timeout = SOCKET_TIMEOUT_S

    server: "_HubHTTPServer"

    def setup(self):
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.track(self.connection, open_=False)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def log_message(self, format, *args):
        logger.debug("fake hub: " + format, *args)

    # -------------------------------------------------------------------------------------------- plumbing

    @property
    def state(self) -> HubState:
        return self.server.state

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        with self.state.lock:
            self.state.requests.append((method, unquote(split.path)))
        try:
            self.body = self._read_body()
            handler, match = self._route(method, split.path)
            if handler is None:
                self._unhandled(method, split.path)
                raise HubError(404, f"Fake Hub has no handler for {method} {split.path}")
            with self.state.lock:
                handler(**{k: unquote(v) if v is not None else None for k, v in match.groupdict().items()})
        except HubError as error:
            self._send_error(error)
        except Exception as error:  # a bug in the stand-in: answer 500 rather than hang the client
            logger.exception("fake hub: error while answering %s %s", method, self.path)
            self._send_error(HubError(500, f"Fake Hub error: {error!r}"))

    def _route(self, method: str, path: str) -> tuple[Callable | None, re.Match | None]:
        for route_method, pattern, name in ROUTES:
            match = pattern.fullmatch(path)
            if route_method == method and match is not None:
                return getattr(self, "_" + name), match
        return None, None

    def _unhandled(self, method: str, path: str) -> None:
        logger.warning("fake hub: no handler for %s %s (answered with an error; add it to tests/hub_server.py)",
                       method, path)
        with self.state.lock:
            self.state.unhandled.append((method, unquote(path)))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HubError(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from error

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _send_error(self, error: HubError) -> None:
        headers = {"X-Error-Message": error.message, **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send_json({"error": error.message}, status=error.status, headers=headers)

    def _require_token(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.state.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _readable_repo(self, types: str, repo_id: str) -> Repo:
        repo = self.state.get_repo(REPO_TYPES[types], repo_id)
        if repo.private and self.headers.get("Authorization") != f"Bearer {self.state.token}":
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _writable_repo(self, types: str, repo_id: str) -> Repo:
        self._require_token()
        return self.state.get_repo(REPO_TYPES[types], repo_id)

    def _flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0] in TRUE_VALUES

    @property
    def base_url(self) -> str:
        return self.server.base_url

    # ------------------------------------------------------------------------------------------- account

    def _agent_harnesses(self) -> None:
        """huggingface_hub asks once per process which agent harnesses the Hub knows; none here (an empty registry in
        the Hub's shape: huggingface_hub 2.4 reads it as a dict)."""
        self._send_json({"standardEnvVars": [], "harnesses": {}})

    def _whoami(self) -> None:
        self._require_token()
        self._send_json({
            "type": "user", "id": "fake-user-id", "name": FAKE_USER, "fullname": "Fake User", "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
        })

    def _validate_yaml(self) -> None:
        self._send_json({"errors": [], "warnings": []})

    # --------------------------------------------------------------------------------------- repositories

    def _create_repo(self) -> None:
        self._require_token()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
        private = payload.get("private") or payload.get("visibility") == "private"
        try:
            repo = self.state.create_repo(repo_type, repo_id, bool(private))
        except HubError as error:
            url = f"{self.base_url}/{URL_PREFIXES[repo_type]}{repo_id}"
            self._send_json({"error": error.message, "url": url}, status=409,
                            headers={"X-Error-Message": error.message})
            return
        self._send_json({"url": f"{self.base_url}/{repo.url_path}", "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        self._require_token()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
        self.state.get_repo(repo_type, repo_id)
        del self.state.repos[(repo_type, repo_id)]
        self._send_json({})

    def _repo_info(self, types: str, repo_id: str, revision: str | None) -> None:
        repo = self._readable_repo(types, repo_id)
        commit = repo.resolve(revision or "main")
        siblings = [{"rfilename": p, "size": len(d), "blobId": git_blob_sha(d)}
                    for p, d in sorted(commit.files.items())]
        self._send_json({
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
            "sha": commit.sha, "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "createdAt": repo.created_at, "lastModified": commit.date, "siblings": siblings,
            "usedStorage": sum(len(d) for d in commit.files.values()),
        })

    def _tree(self, types: str, repo_id: str, revision: str, path: str | None) -> None:
        commit = self._readable_repo(types, repo_id).resolve(revision)
        if path and not _is_folder(commit.files, path):
            raise HubError(404, f"{path} does not exist on {revision!r}", "EntryNotFound",
                           {"X-Repo-Commit": commit.sha})
        self._send_json(_tree_entries(commit.files, path or "", recursive=self._flag("recursive")))

    def _paths_info(self, types: str, repo_id: str, revision: str) -> None:
        commit = self._readable_repo(types, repo_id).resolve(revision)
        form = parse_qs(self.body.decode())
        found = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                found.append(_file_entry(path, commit.files[path]))
            elif _is_folder(commit.files, path):
                found.append(_folder_entry(commit.files, path))
        self._send_json(found)

    def _list_commits(self, types: str, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(types, repo_id)
        self._send_json([
            {"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": FAKE_USER}]}
            for c in repo.history(repo.resolve(revision))
        ])

    def _refs(self, types: str, repo_id: str) -> None:
        repo = self._readable_repo(types, repo_id)

        def ref(name: str, sha: str) -> dict:
            full = name if name.startswith("refs/") else f"refs/heads/{name}"
            return {"name": name, "ref": full, "targetCommit": sha}

        branches = [ref(n, s) for n, s in repo.refs.items() if not n.startswith("refs/pr/")]
        prs = [ref(n, s) for n, s in repo.refs.items() if n.startswith("refs/pr/")]
        payload = {"branches": branches, "tags": [], "converts": []}
        if self._flag("include_prs"):
            payload["pullRequests"] = prs
        self._send_json(payload)

    def _create_branch(self, types: str, repo_id: str, branch: str) -> None:
        repo = self._writable_repo(types, repo_id)
        if branch in repo.refs:
            raise HubError(409, f"Branch {branch} already exists")
        repo.refs[branch] = repo.resolve(self._json_body().get("startingPoint") or "main").sha
        self._send_json({})

    def _delete_branch(self, types: str, repo_id: str, branch: str) -> None:
        repo = self._writable_repo(types, repo_id)
        if repo.refs.pop(branch, None) is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        self._send_json({})

    # -------------------------------------------------------------------------------------------- uploads

    def _preupload(self, types: str, repo_id: str, revision: str) -> None:
        repo = self._writable_repo(types, repo_id)
        commit = repo.resolve(revision)
        files = []
        for item in self._json_body().get("files", []):
            existing = commit.files.get(item["path"])
            oid = git_blob_sha(existing) if existing is not None else None
            files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._send_json({"files": files, "commitOid": commit.sha})

    def _commit(self, types: str, repo_id: str, revision: str) -> None:
        repo = self._writable_repo(types, repo_id)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        base = repo.resolve(revision)
        ref, pr_url = self._commit_ref(repo, revision)
        files, header = _apply_commit_lines(base.files, lines)
        parent = header.get("parentCommit")
        if parent and not base.sha.startswith(parent):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        commit = repo.add_commit(ref, files, header.get("summary", ""), header.get("description", ""))
        self._send_json({
            "success": True, "commitOid": commit.sha,
            "commitUrl": f"{self.base_url}/{repo.url_path}/commit/{commit.sha}",
            "hookOutput": "", "pullRequestUrl": pr_url,
        })

    def _commit_ref(self, repo: Repo, revision: str) -> tuple[str, str | None]:
        """The ref a commit goes to, and the pull request URL when `create_pr` asks for a new one."""
        if self._flag("create_pr"):
            number = 1 + sum(name.startswith("refs/pr/") for name in repo.refs)
            ref = f"refs/pr/{number}"
            repo.refs[ref] = repo.resolve(revision).sha
            return ref, f"{self.base_url}/{repo.url_path}/discussions/{number}"
        ref = revision.removeprefix("refs/heads/")
        if ref not in repo.refs:
            raise HubError(400, f"Cannot commit to {revision!r}: not a branch")
        return ref, None

    def _xet_token(self, types: str, repo_id: str, kind: str) -> None:
        self._unhandled(self.command, urlsplit(self.path).path)
        raise HubError(501, "The fake Hub serves no Xet storage: every file is a regular git blob")

    # ------------------------------------------------------------------------------------------ downloads

    def _resolve(self, types: str | None, repo_id: str, revision: str, path: str) -> None:
        repo = self._readable_repo(types or "models", repo_id)
        commit = repo.resolve(revision)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {"ETag": f'"{git_blob_sha(data)}"', "X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        byte_range = _parse_range(self.headers.get("Range"), len(data))
        if byte_range is None:
            self._send(200, data, headers, content_type="application/octet-stream")
            return
        start, end = byte_range
        if start >= len(data) or start > end:
            raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(206, data[start:end + 1], headers, content_type="application/octet-stream")


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, state: HubState):
        super().__init__((HOST, 0), _HubRequestHandler)
        self.state = state
        self.base_url = f"http://{HOST}:{self.server_address[1]}"
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def server_bind(self):
        # Skip HTTPServer.server_bind's reverse DNS lookup of the host name: loopback needs none.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """Wake up request threads parked on keep-alive connections so that they end now."""
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# -------------------------------------------------------------------------------------------- server and client


class FakeHub:
    """What a test sees of the fake Hub: its URL and token, what was uploaded, and which requests were made."""

    def __init__(self, state: HubState, url: str):
        self._state = state
        self.url = url
        self.token = state.token
        self.client_urls: list[str] = []  # every URL huggingface_hub's HTTP client was asked to reach
        self.foreign_urls: list[str] = []  # those that were not on this server (refused)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request the server received, in order."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def unhandled(self) -> list[tuple[str, str]]:
        """(method, path) of requests the server has no answer for."""
        with self._state.lock:
            return list(self._state.unhandled)

    @property
    def repos(self) -> dict[str, dict[str, bytes]]:
        """Repo id -> {path: bytes} at the head of `main`. A dataset whose id is also a model's is `datasets/<id>`."""
        with self._state.lock:
            result: dict[str, dict[str, bytes]] = {}
            models_first = sorted(self._state.repos.items(), key=lambda item: item[0][0] != "model")
            for (_repo_type, repo_id), repo in models_first:
                key = repo_id if repo_id not in result else repo.url_path
                result[key] = dict(repo.resolve("main").files)
            return result

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """{path: bytes} of one repository at `revision`."""
        with self._state.lock:
            return dict(self._state.get_repo(repo_type, repo_id).resolve(revision).files)

    def observe(self, request) -> None:
        """huggingface_hub client hook: record the URL, refuse any that is not on this server."""
        url = str(request.url)
        self.client_urls.append(url)
        if not url.startswith(self.url + "/"):
            self.foreign_urls.append(url)
            raise ForeignRequestError(f"fake_hub refused a request to {url}: only {self.url} may be reached")


class FakeHubServer:
    """Starts and stops the threaded server; `start()` returns the `FakeHub` view of it."""

    def __init__(self, token: str = FAKE_TOKEN, max_lifetime_s: float = MAX_LIFETIME_S):
        self.state = HubState(token)
        self.max_lifetime_s = max_lifetime_s
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Timer | None = None
        self._stop_lock = threading.Lock()

    def start(self) -> FakeHub:
        self._httpd = _HubHTTPServer(self.state)
        assert self._httpd.server_address[0] == HOST, "the fake Hub must listen on loopback only"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        self._watchdog = threading.Timer(self.max_lifetime_s, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()
        return FakeHub(self.state, self._httpd.base_url)

    def _expire(self) -> None:
        logger.warning("fake hub: still running after %.0f s, shutting down", self.max_lifetime_s)
        self.stop()

    def stop(self) -> None:
        with self._stop_lock:
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                return
            if self._watchdog is not None and self._watchdog is not threading.current_thread():
                self._watchdog.cancel()
            httpd.shutdown()
            httpd.close_connections()
            httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------- pointing clients at it


def _redirect_huggingface_hub(monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> None:
    """Every module-level copy of the endpoint, the resolve-URL template and the offline flag in huggingface_hub."""
    import huggingface_hub
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {HOST})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if "HUGGINGFACE_CO_URL_TEMPLATE" in vars(huggingface_hub):  # cached by the package's lazy attribute access
        monkeypatch.setattr(huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(hub.url)})
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)  # the HfApi behind huggingface_hub.create_repo & co


def _redirect_libraries(monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> None:
    """transformers caches an HfApi (endpoint fixed at creation); datasets copies the endpoint and offline flag."""
    try:
        from transformers.utils import hub as transformers_hub
    except ImportError:
        transformers_hub = None
    if transformers_hub is not None:
        monkeypatch.setattr(transformers_hub, "_hf_api", None)
    try:
        from datasets import config as datasets_config
    except ImportError:
        datasets_config = None
    if datasets_config is not None:
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", hub.url)
        datasets_url = hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
        monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL", datasets_url)
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets_config, "HF_DATASETS_OFFLINE", False)
        # datasets would also report downloads to S3 and ask the dataset viewer: hosts the fake Hub is not.
        monkeypatch.setattr(datasets_config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        monkeypatch.setattr(datasets_config, "USE_PARQUET_EXPORT", False)


def _redirect_environment(monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> None:
    for name, value in {
        "HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "DISABLE_SAFETENSORS_CONVERSION": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(name, raising=False)


def _clear_filesystem_cache() -> None:
    """fsspec reuses HfFileSystem instances, whose endpoint was fixed when they were made."""
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()


@contextmanager
def _observed_client(hub: FakeHub) -> Iterator[None]:
    """huggingface_hub's shared HTTP clients with `hub.observe` as first request hook; the originals come back after."""
    from huggingface_hub.utils import _http

    sync_factory, async_factory = _http._GLOBAL_CLIENT_FACTORY, _http._GLOBAL_ASYNC_CLIENT_FACTORY

    async def observe_async(request) -> None:
        hub.observe(request)

    def observed_sync():
        client = sync_factory()
        client.event_hooks = {**client.event_hooks, "request": [hub.observe, *client.event_hooks["request"]]}
        return client

    def observed_async():
        client = async_factory()
        client.event_hooks = {**client.event_hooks, "request": [observe_async, *client.event_hooks["request"]]}
        return client

    _http.set_client_factory(observed_sync)
    _http.set_async_client_factory(observed_async)
    try:
        yield
    finally:
        _http.set_client_factory(sync_factory)  # also closes the observed client and its keep-alive connections
        _http.set_async_client_factory(async_factory)


@pytest.fixture
def fake_hub(monkeypatch) -> Iterator[FakeHub]:
    """A fresh, empty fake Hub on 127.0.0.1, with huggingface_hub, transformers and datasets pointed at it, online,
    and authenticated as `user` with token `hf_fake`, for this test only."""
    server = FakeHubServer()
    hub = server.start()
    try:
        _redirect_environment(monkeypatch, hub)
        _redirect_huggingface_hub(monkeypatch, hub)
        _redirect_libraries(monkeypatch, hub)
        _clear_filesystem_cache()
        with _observed_client(hub):
            yield hub
    finally:
        server.stop()
        _clear_filesystem_cache()
    assert not hub.foreign_urls, f"code under test tried to reach other hosts than the fake Hub: {hub.foreign_urls}"
