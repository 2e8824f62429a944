"""A local stand-in for the Hugging Face Hub on 127.0.0.1: read and write the endpoints huggingface_hub 2.4 and datasets 5.2 call.

Routes and headers follow the client code in site-packages/huggingface_hub (file_download.get_hf_file_metadata,
utils/_http.hf_raise_for_status, hf_api.create_repo / _commit_api.fetch_upload_modes / _prepare_commit_payload,
hf_file_system paths-info and tree listing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

RepoType = Literal["model", "dataset"]
DATE = "2026-01-01T00:00:00.000Z"
META_SUFFIX = ".hubmeta.json"
USER = "tester"


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes = b""


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def safetensors_counts(path: Path) -> dict[str, int]:
    """Parameter counts per dtype read from a safetensors header."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    counts: dict[str, int] = {}
    for key, t in header.items():
        if key == "__metadata__":
            continue
        size = 1
        for d in t["shape"]:
            size *= d
        counts[t["dtype"]] = counts.get(t["dtype"], 0) + size
    return counts


def card_data(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a README.md, or {}."""
    if not readme.is_file():
        return {}
    text = readme.read_text()
    if not text.startswith("---"):
        return {}
    parts = text.split("---", 2)
    try:
        data = yaml.safe_load(parts[1]) if len(parts) == 3 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


class LocalHub:
    """Repos are folders under root/{models,datasets}/{ns}/{name}; per-repo settings live in a side JSON file."""

    def __init__(self, root: Path, token: str | None = None):
        self.root = Path(root)
        self.token = token
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- repo store ---------------------------------------------------------
    def repo_dir(self, repo_id: str, repo_type: RepoType = "model") -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def add_repo(
        self,
        repo_id: str,
        files: Path | dict[str, bytes | str] | None = None,
        repo_type: RepoType = "model",
        **meta: Any,
    ) -> Path:
        """Create a repo from a folder or a {path: content} dict; meta sets gated, private, tags, pipeline_tag, library_name, cardData."""
        d = self.repo_dir(repo_id, repo_type)
        d.mkdir(parents=True, exist_ok=True)
        if isinstance(files, Path):
            for p in sorted(files.rglob("*")):
                if p.is_file():
                    target = d / p.relative_to(files)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(p.read_bytes())
        elif files:
            for rel, content in files.items():
                target = d / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.encode() if isinstance(content, str) else content)
        self._meta_path(d).write_text(json.dumps(meta))
        return d

    def _meta_path(self, d: Path) -> Path:
        return d.parent / (d.name + META_SUFFIX)

    def meta(self, d: Path) -> dict[str, Any]:
        p = self._meta_path(d)
        return json.loads(p.read_text()) if p.exists() else {}

    def files(self, d: Path) -> list[str]:
        return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())

    def sha(self, d: Path) -> str:
        h = hashlib.sha1()
        for rel in self.files(d):
            h.update(rel.encode() + b"\0" + _sha1((d / rel).read_bytes()).encode())
        return h.hexdigest()

    # -- lifecycle ----------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalHub":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, r: Recorded) -> None:
        with self._lock:
            self.requests.append(r)

    def paths(self, method: str | None = None) -> list[str]:
        """Recorded request paths, optionally of one method."""
        return [r.path for r in self.requests if method is None or r.method == method]


@contextmanager
def serve_hub(root: Path, token: str | None = None) -> Iterator[LocalHub]:
    """Run a LocalHub for the duration of a with-block."""
    hub = LocalHub(root, token).start()
    try:
        yield hub
    finally:
        hub.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: LocalHub

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr access log
        pass

    # -- plumbing -----------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _auth(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value.removeprefix("Bearer ").strip() or None

    def _handle(self) -> None:
        hub = self.server_hub
        body = self._body() if self.command in ("POST", "PUT") else b""
        hub.record(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        token = self._auth()
        if token and hub.token and token != hub.token:
            return self._error(401, None, "Invalid credentials in Authorization header")
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        try:
            self._route(parts, query, body, token)
        except BrokenPipeError:
            pass

    do_GET = do_HEAD = do_POST = do_PUT = _handle

    # -- routing ------------------------------------------------------------
    def _route(self, parts: list[str], query: dict[str, list[str]], body: bytes, token: str | None) -> None:
        hub = self.server_hub
        if parts[:2] == ["api", "whoami-v2"]:
            if not token:
                return self._error(401, None, "Invalid username or password.")
            return self._json(200, {
                "type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
            })
        if parts[:3] == ["api", "repos", "create"] and self.command == "POST":
            return self._create(json.loads(body or b"{}"), token)
        if parts[:2] == ["api", "validate-yaml"]:
            return self._json(200, {"errors": [], "warnings": []})
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in ("models", "datasets"):
            repo_type: RepoType = "model" if parts[1] == "models" else "dataset"
            repo_id = "/".join(parts[2:4])
            return self._api(repo_type, repo_id, parts[4:], query, body, token)
        if parts and parts[0] == "datasets" and len(parts) >= 5 and parts[3] == "resolve":
            return self._resolve("dataset", "/".join(parts[1:3]), parts[4], "/".join(parts[5:]), token)
        if len(parts) >= 4 and parts[2] == "resolve":
            return self._resolve("model", "/".join(parts[:2]), parts[3], "/".join(parts[4:]), token)
        return self._error(404, None, f"no route for {self.path!r}")

    def _repo(self, repo_type: RepoType, repo_id: str, token: str | None, files: bool) -> Path | None:
        """The repo folder, or None after answering with the error the Hub gives."""
        hub = self.server_hub
        d = hub.repo_dir(repo_id, repo_type)
        meta = hub.meta(d)
        if not d.is_dir() or (meta.get("private") and not token):
            self._error(404 if not token else 401, "RepoNotFound", "Repository not found")
            return None
        if files and meta.get("gated") and not token:
            kind = "model" if repo_type == "model" else "dataset"
            self._error(
                401, "GatedRepo",
                f"Access to {kind} {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.",
            )
            return None
        return d

    def _revision_ok(self, d: Path, rev: str) -> bool:
        if rev in ("main", self.server_hub.sha(d)):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return False

    def _api(self, repo_type: RepoType, repo_id: str, rest: list[str], query: dict, body: bytes, token: str | None) -> None:
        hub = self.server_hub
        if not rest or rest[0] == "revision":
            d = self._repo(repo_type, repo_id, token, files=False)
            if d is None or (len(rest) > 1 and not self._revision_ok(d, rest[1])):
                return
            return self._json(200, self._info(repo_type, repo_id, d))
        if rest[0] == "tree" and len(rest) >= 2:
            d = self._repo(repo_type, repo_id, token, files=True)
            if d is None or not self._revision_ok(d, rest[1]):
                return
            sub = "/".join(rest[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            base = d / sub if sub else d
            if not base.is_dir():
                return self._error(404, "EntryNotFound", f"{sub} does not exist on main")
            return self._json(200, self._tree(d, base, recursive))
        if rest[0] == "paths-info" and self.command == "POST":
            d = self._repo(repo_type, repo_id, token, files=True)
            if d is None or not self._revision_ok(d, rest[1]):
                return
            form = parse_qs(body.decode())
            paths = form.get("paths") or (json.loads(body).get("paths", []) if body.startswith(b"{") else [])
            out = [self._entry(d, d / p) for p in paths if (d / p).exists()]
            return self._json(200, out)
        if rest[0] == "preupload" and self.command == "POST":
            if not token:
                return self._error(401, None, "Invalid username or password.")
            if not hub.repo_dir(repo_id, repo_type).is_dir():
                return self._error(404, "RepoNotFound", "Repository not found")
            files = json.loads(body).get("files", [])
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if rest[0] == "commit" and self.command == "POST":
            return self._commit(repo_type, repo_id, body, token)
        return self._error(404, None, f"no route for {self.path!r}")

    # -- read side ----------------------------------------------------------
    def _entry(self, d: Path, p: Path) -> dict[str, Any]:
        rel = str(p.relative_to(d))
        if p.is_dir():
            return {"type": "directory", "oid": _sha1(rel.encode()), "size": 0, "path": rel}
        data = p.read_bytes()
        return {"type": "file", "oid": _sha1(data), "size": len(data), "path": rel}

    def _tree(self, d: Path, base: Path, recursive: bool) -> list[dict[str, Any]]:
        items = sorted(base.rglob("*") if recursive else base.iterdir())
        return [self._entry(d, p) for p in items]

    def _info(self, repo_type: RepoType, repo_id: str, d: Path) -> dict[str, Any]:
        hub = self.server_hub
        meta = hub.meta(d)
        sha = hub.sha(d)
        card = meta.get("cardData", card_data(d / "README.md"))
        tags = list(meta.get("tags", []))
        if card.get("license") and f"license:{card['license']}" not in tags:
            tags.append(f"license:{card['license']}")
        info: dict[str, Any] = {
            "_id": sha[:24], "id": repo_id, "author": repo_id.split("/")[0], "sha": sha,
            "lastModified": DATE, "createdAt": DATE, "private": bool(meta.get("private", False)),
            "gated": meta.get("gated", False), "disabled": False, "downloads": 0, "likes": 0,
            "tags": tags, "cardData": card, "siblings": [{"rfilename": f} for f in hub.files(d)],
        }
        if repo_type == "model":
            info["modelId"] = repo_id
            info["pipeline_tag"] = meta.get("pipeline_tag")
            info["library_name"] = meta.get("library_name", card.get("library_name"))
            cfg_path = d / "config.json"
            if cfg_path.is_file():
                cfg = json.loads(cfg_path.read_text())
                info["config"] = {k: cfg[k] for k in ("architectures", "model_type") if k in cfg}
            counts: dict[str, int] = {}
            for f in d.glob("*.safetensors"):
                for dtype, n in safetensors_counts(f).items():
                    counts[dtype] = counts.get(dtype, 0) + n
            if counts:
                info["safetensors"] = {"parameters": counts, "total": sum(counts.values())}
        return info

    def _resolve(self, repo_type: RepoType, repo_id: str, rev: str, path: str, token: str | None) -> None:
        d = self._repo(repo_type, repo_id, token, files=True)
        if d is None or not self._revision_ok(d, rev):
            return
        sha = self.server_hub.sha(d)
        f = d / path
        if not path or not f.is_file():
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": sha})
        data = f.read_bytes()
        headers = {"X-Repo-Commit": sha, "ETag": f'"{_sha1(data)}"', "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and self.command == "GET":
            start_s, _, end_s = rng[6:].partition("-")
            start = int(start_s or 0)
            end = min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")

    # -- write side ---------------------------------------------------------
    def _create(self, payload: dict[str, Any], token: str | None) -> None:
        if not token:
            return self._error(401, None, "Invalid username or password.")
        repo_type: RepoType = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        hub = self.server_hub
        d = hub.repo_dir(repo_id, repo_type)
        url = f"{hub.url}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
        if d.exists():
            return self._json(409, {"error": "You already created this repo", "url": url})
        # huggingface_hub >= 2 sends "visibility"; 1.x sends "private": the Hub API takes both
        hub.add_repo(repo_id, None, repo_type, private=payload.get("visibility") == "private" or payload.get("private") is True)
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _commit(self, repo_type: RepoType, repo_id: str, body: bytes, token: str | None) -> None:
        if not token:
            return self._error(401, None, "Invalid username or password.")
        hub = self.server_hub
        d = hub.repo_dir(repo_id, repo_type)
        if not d.is_dir():
            return self._error(404, "RepoNotFound", "Repository not found")
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                target = d / value["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                (d / value["path"]).unlink(missing_ok=True)
            elif key == "lfsFile":
                return self._error(400, None, "this test hub only accepts regular uploads")
        sha = hub.sha(d)
        prefix = "datasets/" if repo_type == "dataset" else ""
        self._json(200, {"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{sha}", "pullRequestUrl": None})
