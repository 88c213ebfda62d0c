"""A loopback fake of the Hugging Face Hub's file-resolution API, with fault injection, for download tests.

It serves `HEAD|GET /{org}/{name}/resolve/{revision}/{path}` and `GET /api/models/{repo}/revision/{rev}` (the
commit a branch points to, for first-download pinning; `FakeRepo.move_main` adds a commit) the
way huggingface_hub 2.x expects (X-Repo-Commit, ETag, Content-Length; 404s carry X-Error-Code), binds
127.0.0.1 only, and shuts itself down after `ttl` seconds even if a test forgets to.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    commit: str  # 40-hex commit sha
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)  # paths whose ETag is their sha256, as for LFS files
    token: str | None = None  # if set, requests need "Authorization: Bearer <token>"
    old: dict[str, dict[str, bytes]] = field(default_factory=dict)  # earlier commits' files, by sha

    def at(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit, files) that `rev` names: `main` and `commit` are the newest, `old` the earlier ones."""
        if rev in ("main", self.commit):
            return self.commit, self.files
        return (rev, self.old[rev]) if rev in self.old else None

    def move_main(self, commit: str, files: dict[str, bytes]) -> None:
        """A new commit on main; the current one stays reachable by its sha."""
        self.old[self.commit] = self.files
        self.commit, self.files = commit, files


@dataclass
class FakeHub:
    """`faults[path]`: "short" (GET answers half the body with a matching Content-Length, as a truncating
    proxy would), "drop-once" (the first GET hangs up half-way; later ones succeed, honouring Range) or
    "corrupt" (same size, flipped bytes)."""

    repos: dict[str, FakeRepo]
    faults: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, ttl: float = 60.0) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        timer = threading.Timer(ttl, self.stop)  # bounded lifetime
        timer.daemon = True
        timer.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # ------------------------------------------------------------------ request handling
    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append(f"{h.command} {path}")
        parts = path.strip("/").split("/")
        if len(parts) >= 5 and parts[:2] == ["api", "models"] and parts[-2] == "revision":
            return self._revision(h, "/".join(parts[2:-2]), parts[-1])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        self._error(h, 404, None)

    def _repo(self, h: BaseHTTPRequestHandler, repo_id: str) -> FakeRepo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound")
            return None
        if repo.token and h.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(h, 401, "GatedRepo")
            return None
        return repo

    def _revision(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str) -> None:
        repo = self._repo(h, repo_id)
        if repo is None:
            return
        found = repo.at(rev)
        if found is None:
            return self._error(h, 404, "RevisionNotFound")
        data = f'{{"id": "{repo_id}", "sha": "{found[0]}"}}'.encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _resolve(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, file: str, body: bool) -> None:
        repo = self._repo(h, repo_id)
        if repo is None:
            return
        found = repo.at(rev)
        if found is None:
            return self._error(h, 404, "RevisionNotFound")
        commit, files = found
        if file not in files:
            return self._error(h, 404, "EntryNotFound")
        data = files[file]
        if file in repo.lfs:
            etag = hashlib.sha256(data).hexdigest()
        else:  # git blob sha1, as the Hub reports for small files
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        fault = self.faults.get(file) if body else None
        if fault == "corrupt":
            data = bytes(b ^ 0xFF for b in data)
        elif fault == "short":
            data = data[: len(data) // 2]
        start = 0
        ranged = h.headers.get("Range", "")
        if body and ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[6:-1])
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{etag}"')
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if not body:
            return
        if fault == "drop-once":
            del self.faults[file]
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data[start:])

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None) -> None:
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("Content-Length", "0")
        h.end_headers()
