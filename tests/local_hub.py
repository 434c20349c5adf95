"""A Hugging Face hub on loopback for the tests (no hub is reachable from these machines): the real
`huggingface_hub`, the waker's and the engines' own, downloads from it through its endpoint
(`HF_ENDPOINT`, or `endpoint=`). It answers what that library asks for a download (read from
huggingface_hub 2.5's source): a revision's commit, the repository's tree, each file's headers and
bytes (ranges too), and its errors as the hub sends them (`X-Error-Code`). Never the Xet protocol:
no `X-Xet-Hash`, no `xetHash`, so files come over plain HTTP.

A test arranges `repos`, reads `requests`, and can hold a file's bytes half-way (`stall`) until it
lets them go (`release`)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

CHUNK = 1024 * 1024


@dataclass
class HubRepo:
    files: dict[str, bytes]
    gated: bool = False  # refused without the token below
    token: str = "hf_test_token"
    lfs: tuple[str, ...] = (".safetensors", ".bin", ".gguf", ".pth", ".pt")

    @property
    def commit(self) -> str:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
        return digest.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs)

    def blob(self, path: str) -> str:
        data = self.files[path]
        if self.is_lfs(path):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    @classmethod
    def from_dir(cls, root: Path, **kwargs: object) -> HubRepo:
        return cls({str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}, **kwargs)  # type: ignore[arg-type]


@dataclass
class LocalHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path), in order
    stall: set[str] = field(default_factory=set)  # files whose GET sends half, then waits
    url: str = ""
    _released: threading.Event = field(default_factory=threading.Event)

    def gets(self, path: str) -> int:
        """How many times a file's bytes were asked for."""
        return sum(1 for method, p in self.requests if method == "GET" and p.endswith("/" + path))

    def release(self) -> None:
        self._released.set()

    def _refused(self, request: web.Request, repo_id: str) -> web.Response | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
            return web.json_response({"error": "Repository not found"}, status=404, headers=headers)
        if repo.gated and request.headers.get("Authorization") != f"Bearer {repo.token}":
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            headers = {"X-Error-Code": "GatedRepo", "X-Error-Message": message}
            return web.json_response({"error": message}, status=401, headers=headers)
        return None

    async def _revision(self, request: web.Request) -> web.Response:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        if (refused := self._refused(request, repo_id)) is not None:
            return refused
        repo = self.repos[repo_id]
        if request.match_info["revision"] not in ("main", repo.commit):
            return web.json_response(
                {"error": "Invalid rev id"}, status=404, headers={"X-Error-Code": "RevisionNotFound"}
            )
        return web.json_response({"id": repo_id, "sha": repo.commit, "private": repo.gated})

    async def _tree(self, request: web.Request) -> web.Response:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        if (refused := self._refused(request, repo_id)) is not None:
            return refused
        repo = self.repos[repo_id]
        entries = []
        for path, data in sorted(repo.files.items()):
            entry: dict[str, object] = {"type": "file", "path": path, "size": len(data), "oid": repo.blob(path)}
            if repo.is_lfs(path):
                entry["oid"] = hashlib.sha1(path.encode()).hexdigest()  # the pointer's, as the hub gives it
                entry["lfs"] = {"oid": repo.blob(path), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        if (refused := self._refused(request, repo_id)) is not None:
            return refused
        repo, path = self.repos[repo_id], request.match_info["path"]
        if path not in repo.files:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
        data = repo.files[path]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.blob(path)}"', "Accept-Ranges": "bytes"}
        if repo.is_lfs(path):
            headers |= {"X-Linked-Etag": f'"{repo.blob(path)}"', "X-Linked-Size": str(len(data))}
        if request.method == "HEAD":
            return web.Response(headers=headers | {"Content-Length": str(len(data))})
        start, status = 0, 200
        asked = request.headers.get("Range", "")
        if asked.startswith("bytes=") and asked.endswith("-"):
            start, status = int(asked[6:-1]), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        response = web.StreamResponse(status=status, headers=headers | {"Content-Length": str(len(body))})
        await response.prepare(request)
        half = len(body) // 2 if path in self.stall else len(body)
        for offset in range(0, half, CHUNK):
            await response.write(body[offset : min(offset + CHUNK, half)])
        if half < len(body):
            while not self._released.is_set():
                await asyncio.sleep(0.05)
            await response.write(body[half:])
        await response.write_eof()
        return response

    async def _other(self, request: web.Request) -> web.Response:
        return web.json_response({"error": f"{request.path} is not served here"}, status=404)

    def _app(self) -> web.Application:
        app = web.Application()

        @web.middleware
        async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
            self.requests.append((request.method, request.path))
            return await handler(request)

        app.middlewares.append(record)
        app.router.add_get("/api/models/{org}/{name}/revision/{revision}", self._revision)
        app.router.add_get("/api/models/{org}/{name}/tree/{revision}", self._tree)
        app.router.add_route("HEAD", "/{org}/{name}/resolve/{revision}/{path:.+}", self._resolve)
        app.router.add_get("/{org}/{name}/resolve/{revision}/{path:.+}", self._resolve, allow_head=False)
        app.router.add_route("*", "/{tail:.*}", self._other)
        return app

    @contextmanager
    def serving(self, host: str = "127.0.0.1") -> Iterator[LocalHub]:
        """Serves on a free port of `host`, in a thread of its own, until the block ends."""
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(self._app())
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, host, 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.run_until_complete(runner.cleanup())
            loop.close()
