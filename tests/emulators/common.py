"""Shared machinery of the provider emulators: a real aiohttp server on 127.0.0.1 in a background
thread, scripted faults, job timing, and deterministic result images.

Result images encode what the emulator received, so tests can check it end to end:
the left half is the mean colour of the reference image the job was given, the right half a
colour derived from (prompt, seed, index).
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from http import HTTPStatus

from aiohttp import web
from PIL import Image, ImageStat


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_colour(prompt: str, seed: Any, index: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{prompt}|{seed}|{index}".encode()).digest()
    return digest[0], digest[1], digest[2]


def mean_colour(image_bytes: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(image_bytes)) as image:
        return tuple(round(v) for v in ImageStat.Stat(image.convert("RGB")).mean)


def actual_mime(data: bytes) -> str | None:
    """The real type of image bytes (what a storage service sniffs), or None if not an image."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return Image.MIME.get(probe.format)
    except (OSError, ValueError):
        return None


def mime_mismatch(declared: str, data: bytes) -> str | None:
    """A complaint when a file's declared content type is not what its bytes are."""
    actual = actual_mime(data)
    if actual is None:
        return "the file is not an image"
    if declared.split(";")[0].strip().lower() != actual:
        return f"content type {declared} does not match the file ({actual})"
    return None


def synth_image(width: int, height: int, reference: bytes, prompt: str, seed: Any, index: int,
                fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", (width, height), seed_colour(prompt, seed, index))
    image.paste(mean_colour(reference), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@dataclass
class Fault:
    """What to do instead of (or on top of) the normal answer for one request of one phase.

    kind: "status" (answer `status` with `body`/`headers`), "reset" (drop the connection),
    "hang" (never answer), "malformed" (HTTP 200, broken JSON), "truncate" (send half the
    image but declare it whole), "short_image" (a complete HTTP answer holding a cut-off image),
    "html" (nginx's HTML error page with `status`), "text" (aiohttp's text/plain error with
    `status`), "redirect" (`status`, e.g. 302 or 307, with Location `body`; without a body, the
    same path again, as a relative Location: the next arrival is handled normally).

    Applied after the request was handled (the provider did the work): "lose_answer" (the job or
    upload exists, then the connection drops before the answer), "recode" (the normal answer with
    another status, e.g. 201/202, plus `headers`), "callback" (call `callback()` in the server
    thread, then send the normal answer: lets a test act at an exact moment)."""

    kind: str
    status: int = 500
    body: Any = None
    headers: dict = field(default_factory=dict)
    callback: Callable[[], None] | None = None


AFTER_HANDLING = {"lose_answer", "recode", "callback"}

# What real servers answer for a path they do not serve: aiohttp's own text, and nginx's page.
NGINX_REASONS = {404: "Not Found", 405: "Not Allowed"}


def aiohttp_page(status: int) -> web.Response:
    """The answer aiohttp itself gives (e.g. "404: Not Found", text/plain)."""
    return web.Response(status=status, text=f"{status}: {HTTPStatus(status).phrase}", content_type="text/plain")


def nginx_page(status: int) -> web.Response:
    """nginx's built-in error page, as a provider's reverse proxy sends it."""
    title = f"{status} {NGINX_REASONS.get(status, HTTPStatus(status).phrase)}"
    return web.Response(status=status, content_type="text/html", text=(
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"))


class Faults:
    """Per-phase queues of faults, consumed one per request; safe to script from the test thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Fault]] = defaultdict(deque)

    def add(self, phase: str, kind: str, times: int = 1, **options) -> None:
        with self._lock:
            self._queues[phase].extend(Fault(kind, **options) for _ in range(times))

    def take(self, phase: str, after_handling: bool = False) -> Fault | None:
        """The next fault of `phase` of the given timing (before or after the request is handled)."""
        with self._lock:
            queue = self._queues.get(phase)
            if queue and (queue[0].kind in AFTER_HANDLING) == after_handling:
                return queue.popleft()
            return None

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()


class Emulator:
    """Base class: subclasses add routes in `routes()` and call `await self.answer(...)`."""

    provider = "emulator"
    PHASES: dict[str, str] = {}       # handler name → fault phase, for faults applied after handling

    def __init__(self, api_key: str, processing_s: float = 0.3, queue_s: float = 0.0, latency_s: float = 0.0):
        self.api_key = api_key
        self.processing_s = processing_s
        self.queue_s = queue_s
        self.latency_s = latency_s
        self.faults = Faults()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.counts: dict[str, int] = defaultdict(int)
        self.submissions: list[dict] = []         # every accepted, billable job payload
        self.rejections: list[tuple[int, str]] = []
        self.files: dict[str, tuple[bytes, str]] = {}   # path -> (bytes, content type)
        self.jobs: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._generation = 0
        # how a path this server does not offer is answered: "aiohttp" (its own text/plain
        # "404: Not Found") or "nginx" (the HTML page of a reverse proxy in front of it)
        self.unknown_routes = "aiohttp"
        self.extra_outputs = 0          # images a job returns beyond those asked for

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> "Emulator":
        ready = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._middleware])
            app.add_routes(self.routes())
            app.router.add_get("/files/{name}", self._serve_file)
            runner = web.AppRunner(app, handle_signals=False)
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            self._loop.run_until_complete(self._wait_stop())
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name=f"{self.provider}-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.provider} emulator did not start")
        return self

    async def _wait_stop(self):
        while not self._stopped.is_set():
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread:
            self._thread.join(10)

    def reset(self) -> None:
        """Forget faults, counts and jobs between tests; keep uploaded files (like a real CDN)."""
        self.faults.clear()
        self._generation += 1
        with self._lock:
            self.counts.clear()
            self.submissions.clear()
            self.rejections.clear()
            self.jobs.clear()
        self.processing_s, self.queue_s, self.latency_s = 0.3, 0.0, 0.0
        self.unknown_routes = "aiohttp"
        self.extra_outputs = 0

    def routes(self) -> list:
        raise NotImplementedError

    # ---- helpers for subclasses ------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def store_file(self, data: bytes, content_type: str, suffix: str) -> str:
        name = self.new_id("f") + suffix
        self.files[name] = (data, content_type)
        return f"{self.url}/files/{name}"

    def file_for_url(self, url: str) -> bytes | None:
        prefix = f"{self.url}/files/"
        if isinstance(url, str) and url.startswith(prefix):
            entry = self.files.get(url[len(prefix):])
            return entry[0] if entry else None
        return None

    def job_state(self, job: dict) -> str:
        """'queued' → 'running' → 'done' by the clock; records when a client first saw it done."""
        age = time.monotonic() - job["created"]
        if age < self.queue_s:
            return "queued"
        if age < self.queue_s + self.processing_s:
            return "running"
        job.setdefault("done_seen", time.monotonic())
        return "done"

    def new_job(self, job_id: str, body: dict, **fields) -> dict:
        outcome = self.faults.take("job")
        job = {"body": body, "created": time.monotonic(), "outcome": outcome.kind if outcome else "ok",
               "outcome_message": outcome.body if outcome else None, **fields}
        self.jobs[job_id] = job
        self.submissions.append(body)
        self.count("submit")
        return job

    def route_missing(self, status: int = 404) -> web.Response:
        """A path (or method) this server does not offer, answered as real servers do: never JSON."""
        return nginx_page(status) if self.unknown_routes == "nginx" else aiohttp_page(status)

    def reject(self, status: int, message: str, body_key: str = "message") -> web.Response:
        with self._lock:
            self.rejections.append((status, message))
        return web.json_response({body_key: message}, status=status)

    async def fault_response(self, phase: str, request: web.Request) -> web.StreamResponse | None:
        """Apply the next scripted fault of `phase`, if any. Returns the response to send, or None."""
        fault = self.faults.take(phase)
        return None if fault is None else await self.apply_fault(phase, fault, request)

    async def apply_fault(self, phase: str, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        self.count(f"fault:{phase}:{fault.kind}")
        if fault.kind == "status":
            body = fault.body if fault.body is not None else {"message": f"injected {fault.status}"}
            return web.json_response(body, status=fault.status, headers=fault.headers)
        if fault.kind == "html":
            return nginx_page(fault.status)
        if fault.kind == "text":
            return aiohttp_page(fault.status)
        if fault.kind == "redirect":
            await request.read()
            return web.Response(status=fault.status, headers={"Location": fault.body or request.path_qs,
                                                              **fault.headers})
        if fault.kind == "malformed":
            return web.Response(text='{"data": {"id": ', status=200, content_type="application/json")
        if fault.kind == "reset":
            await request.read()
            request.transport.abort()
            raise ConnectionResetError("injected reset")
        if fault.kind == "hang":
            await request.read()
            await self.hang()
            return web.json_response({"message": "hung request released"}, status=599)
        return None    # file-level faults are applied by _serve_file

    async def hang(self) -> None:
        """Answer nothing until the client gives up, the test ends (reset) or the emulator stops."""
        generation = self._generation
        deadline = time.monotonic() + 120
        while generation == self._generation and not self._stopped.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ---- plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable):
        """Latency, and the faults that act once the request was handled (PHASES: handler → phase)."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        phase = self.PHASES.get(getattr(request.match_info.route.handler, "__name__", ""))
        fault = self.faults.take(phase, after_handling=True) if phase else None
        try:
            response = await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:     # no such route
            if self.unknown_routes != "nginx":
                raise                                   # aiohttp's own answer
            return nginx_page(exc.status)
        if fault is None:
            return response
        self.count(f"fault:{phase}:{fault.kind}")
        if fault.kind == "lose_answer":
            request.transport.abort()
            raise ConnectionResetError("injected: answer lost after the work was done")
        if fault.kind == "recode" and 200 <= response.status < 300:
            response.set_status(fault.status)
            response.headers.update(fault.headers)
        if fault.kind == "callback":
            await asyncio.get_running_loop().run_in_executor(None, fault.callback)
        return response

    def expire_files(self) -> None:
        """The provider deleted every upload (as it does after its retention time)."""
        self.files.clear()

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        self.count("download")
        entry = self.files.get(request.match_info["name"])
        if entry is None:
            return self.route_missing(404)
        data, content_type = entry
        fault = self.faults.take("download")
        if fault is not None:
            self.count(f"fault:download:{fault.kind}")
            if fault.kind == "truncate":
                response = web.StreamResponse(headers={"Content-Type": content_type, "Content-Length": str(len(data))})
                await response.prepare(request)
                await response.write(data[: len(data) // 2])
                request.transport.abort()
                return response
            if fault.kind == "short_image":
                return web.Response(body=data[: len(data) // 2], content_type=content_type)
            if fault.kind == "status":
                return web.json_response({"message": "injected"}, status=fault.status, headers=fault.headers)
            if fault.kind == "hang":
                await self.hang()
            if fault.kind == "redirect":
                return await self.apply_fault("download", fault, request)
        return web.Response(body=data, content_type=content_type)


class Recorder(Emulator):
    """Another origin (its own port): records every request that reaches it, whatever the path or
    method, then answers the next scripted fault of phase "any" (e.g. a redirect), the file set in
    `answers` for that path, or 200 with a small JSON body. The redirect tests point providers'
    redirects here to see what would have been delivered."""

    provider = "recorder"

    def __init__(self):
        super().__init__(api_key="")
        self.received: list[dict] = []
        self.answers: dict[str, tuple[bytes, str]] = {}      # path -> (body, content type)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.received.clear()
        self.answers.clear()

    def routes(self):
        return [web.route("*", "/{tail:.*}", self.record)]

    async def record(self, request: web.Request):
        body = await request.read()
        with self._lock:
            self.received.append({"method": request.method, "path": request.path_qs,
                                  "headers": dict(request.headers), "body": body})
        if (fault := await self.fault_response("any", request)) is not None:
            return fault
        if request.path in self.answers:
            data, content_type = self.answers[request.path]
            return web.Response(body=data, content_type=content_type)
        return web.json_response({"recorded": True})
