"""A small Hugging Face Hub served from this process, for offline tests of the real ``huggingface_hub`` client.

It implements the endpoints that ``snapshot_download``/``hf_hub_download`` (model info, recursive tree listing,
``resolve`` with ETag and commit headers, byte ranges) and ``create_repo``/``upload_folder`` (create, preupload,
NDJSON commit) call, on 127.0.0.1 with a random port. Commits get deterministic git-style ids, so a test can pin a
revision before any download.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)


class LocalHub:
    """``with LocalHub() as hub: hub.add_commit("org/name", {...}); os.environ["HF_ENDPOINT"] = hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # when set, writes (POST) without "Authorization: Bearer <write_token>" get HTTP 401, like the Hub
        self.write_token: str | None = None

    # ------------------------------------------------------------------------------------------ content
    def add_commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", parent: bool = True) -> str:
        """Add a commit whose tree is the branch's previous tree updated with ``files``; returns its id."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            tree = dict(repo.commits[repo.refs[branch]]) if parent and branch in repo.refs else {}
            tree.update(files)
            digest = hashlib.sha1()
            digest.update(repo_id.encode())
            digest.update((repo.refs.get(branch) or "").encode())
            for path in sorted(tree):
                digest.update(path.encode() + b"\0" + hashlib.sha1(tree[path]).digest())
            sha = digest.hexdigest()
            repo.commits[sha] = tree
            repo.refs[branch] = sha
            return sha

    def _resolve(self, repo_id: str, revision: str) -> tuple[Repo | None, str | None]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, None
        revision = unquote(revision)
        if revision in repo.refs:
            return repo, repo.refs[revision]
        if revision in repo.commits:
            return repo, revision
        return repo, None

    # ------------------------------------------------------------------------------------------ server
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ routing
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              method: str = "GET", content_type: str = "application/json") -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        if method != "HEAD" and body:
            h.wfile.write(body)

    def _error(self, h: BaseHTTPRequestHandler, method: str, code: str, message: str) -> None:
        self._send(h, 404, json.dumps({"error": message}).encode(), {"X-Error-Code": code, "X-Error-Message": message},
                   method)

    def _json(self, h: BaseHTTPRequestHandler, method: str, payload: object) -> None:
        self._send(h, 200, json.dumps(payload).encode(), method=method)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        path = url.path
        with self._lock:
            self.requests.append((method, path))
        # the body is read before any answer: a refused request's unread body would otherwise be parsed as the
        # next request line on the same keep-alive connection (huggingface_hub 1.5 reuses it after a 401)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if method == "POST" and self.write_token and h.headers.get("Authorization") != f"Bearer {self.write_token}":
            message = "Invalid credentials in Authorization header"
            self._send(h, 401, json.dumps({"error": message}).encode(), {"X-Error-Message": message}, method)
            return
        parts = [p for p in path.split("/") if p]
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = f"{parts[2]}/{parts[3]}"
                rest = parts[4:]
                if not rest or rest[0] == "revision":
                    return self._model_info(h, method, repo_id, rest[1] if len(rest) > 1 else "main")
                if rest[0] == "tree":
                    return self._tree(h, method, repo_id, rest[1], parse_qs(url.query))
                if rest[0] == "preupload":
                    return self._preupload(h, method, repo_id, body)
                if rest[0] == "commit":
                    return self._commit(h, method, repo_id, unquote(rest[1]), body)
            if parts[:3] == ["api", "repos", "create"]:
                payload = json.loads(body or b"{}")
                repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}" if "/" not in payload.get(
                    "name", "") else payload["name"]
                with self._lock:
                    self.repos.setdefault(repo_id, Repo())
                return self._json(h, method, {"url": f"{self.url}/{repo_id}", "name": repo_id})
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve_file(h, method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            if parts[:2] == ["api", "validate-yaml"]:
                return self._validate_yaml(h, method, body)
            if parts[:2] == ["api", "whoami-v2"]:
                return self._json(h, method, {"name": "user", "type": "user", "orgs": [], "auth": {}})
        except (KeyError, IndexError, ValueError) as exc:
            return self._send(h, 400, json.dumps({"error": str(exc)}).encode(), method=method)
        self._send(h, 404, b'{"error": "no such endpoint"}', method=method)

    def _lookup(self, h: BaseHTTPRequestHandler, method: str, repo_id: str,
                revision: str) -> tuple[Repo | None, str | None]:
        """The repo and commit a revision names, or (None, None) after answering with the Hub's 404."""
        repo, sha = self._resolve(repo_id, revision)
        if repo is None:
            self._error(h, method, "RepoNotFound", f"Repository {repo_id} not found")
        elif sha is None:
            self._error(h, method, "RevisionNotFound", f"Invalid rev id: {revision}")
            repo = None
        return repo, sha

    def _model_info(self, h: BaseHTTPRequestHandler, method: str, repo_id: str, revision: str) -> None:
        repo, sha = self._lookup(h, method, repo_id, revision)
        if repo is None or sha is None:
            return
        siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
        self._json(h, method, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "disabled": False,
                               "gated": False, "siblings": siblings, "tags": ["lvseg"], "library_name": "lvseg"})

    def _tree(self, h: BaseHTTPRequestHandler, method: str, repo_id: str, revision: str, query: dict) -> None:
        repo, sha = self._lookup(h, method, repo_id, revision)
        if repo is None or sha is None:
            return
        entries = []
        for path, data in sorted(repo.commits[sha].items()):
            entry = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
            if path.endswith(".safetensors"):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self._json(h, method, entries)

    def _resolve_file(self, h: BaseHTTPRequestHandler, method: str, repo_id: str, revision: str, path: str) -> None:
        repo, sha = self._lookup(h, method, repo_id, revision)
        if repo is None or sha is None:
            return
        path = unquote(path)
        if path not in repo.commits[sha]:
            return self._error(h, method, "EntryNotFound", f"{path} does not exist at {sha}")
        data = repo.commits[sha][path]
        etag = hashlib.sha256(data).hexdigest() if path.endswith(".safetensors") else git_blob_sha(data)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if path.endswith(".safetensors"):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        status = 200
        byte_range = h.headers.get("Range")
        if byte_range and byte_range.startswith("bytes="):
            start_text, _, end_text = byte_range[6:].partition("-")
            start = int(start_text or 0)
            end = int(end_text) if end_text else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data = data[start: end + 1]
            status = 206
        self._send(h, status, data, headers, method, content_type="application/octet-stream")

    def _validate_yaml(self, h: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        import yaml

        content = json.loads(body or b"{}").get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                metadata = yaml.safe_load(content.split("---", 2)[1])
                if not isinstance(metadata, dict):
                    errors.append({"message": "the metadata block is not a mapping"})
            except yaml.YAMLError as exc:
                errors.append({"message": f"invalid YAML: {exc}"})
        if errors:
            return self._send(h, 400, json.dumps({"errors": errors}).encode(), method=method)
        self._json(h, method, {"errors": [], "warnings": []})

    def _preupload(self, h: BaseHTTPRequestHandler, method: str, repo_id: str, body: bytes) -> None:
        files = json.loads(body or b"{}").get("files", [])
        # Every file is "regular": its content travels inline (base64) in the commit, as the Hub allows.
        self._json(h, method, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})

    def _commit(self, h: BaseHTTPRequestHandler, method: str, repo_id: str, revision: str, body: bytes) -> None:
        files: dict[str, bytes] = {}
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "file":
                value = item["value"]
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] in ("lfsFile", "deletedFile", "deletedFolder"):
                raise ValueError(f"the local hub does not support {item['key']} operations")
        if repo_id not in self.repos:
            return self._error(h, method, "RepoNotFound", f"Repository {repo_id} not found")
        sha = self.add_commit(repo_id, files, branch=revision)
        self._json(h, method, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                               "pullRequestUrl": None})
