"""HTTP plumbing every cloud provider shares: one aiohttp session per call, retries with backoff,
Cancel that lands within a fraction of a second, streamed size-capped downloads, and errors that
name the provider, HTTP status, the provider's message and the job id — with keys redacted.

Why aiohttp: ComfyUI already ships it (no new dependency), and async nodes let several cloud
calls, and a cloud call beside local GPU work, run at the same time. Each prompt runs in a fresh
event loop, so a session lives for one call only.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
import json
import math
import random
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, TypeVar

import aiohttp
from multidict import CIMultiDict

from ..contract import GenerationInterrupted, RunContext

T = TypeVar("T")

# Retrying these is safe for reads and uploads: the server did nothing or will do it again.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# How often a waiting call checks for Cancel.
INTERRUPT_CHECK_S = 0.1
# Redirects the pack follows itself (aiohttp's own following would carry a custom key header such as
# x-api-key to any host); more hops than this is an error.
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# The only schemes ever fetched (data: URIs are decoded, never fetched).
FETCHED_SCHEMES = ("http", "https")
# Headers that are credentials even when they are not the provider's key (fal's upload token).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


class ProviderError(RuntimeError):
    """A cloud call failed. The text names the provider, what failed, the HTTP status (or the code of
    the provider's own answer envelope), the provider's message and the job id. `redact` removes keys
    from every part; CloudBackend applies it to every ProviderError, whoever built it."""

    def __init__(self, provider: str, what: str, *, status: int | None = None, provider_code: Any = None,
                 detail: str | None = None, job_id: str | None = None, hint: str | None = None):
        self.provider, self.what, self.status, self.provider_code = provider, what, status, provider_code
        self.detail, self.job_id, self.hint = detail, job_id, hint
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"{self.provider}: {self.what}"
        if self.status is not None:
            text += f" (HTTP {self.status})"
        if self.provider_code is not None:
            text += f" (provider code {self.provider_code})"
        if self.detail:
            text += f": {self.detail}"
        if self.job_id:
            text += f" [job {self.job_id}]"
        if self.hint:
            text += f". {self.hint}"
        return text

    def redact(self, redactor: Callable[[str], str]) -> "ProviderError":
        """Remove secrets from every text part, in place (the class and traceback are kept)."""
        for name in ("what", "detail", "job_id", "hint"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, redactor(value))
        self.args = (self._text(),)
        return self


class MissingKeyError(ProviderError):
    """No API key configured; raised before anything is uploaded."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds. `request` bounds one HTTP exchange; `job` bounds a job's processing once the provider
    has started it; `queue` bounds the wait in the provider's queue before that (longer: a busy
    provider is no reason to give up, and queued time is not billed)."""

    connect: float = 10.0
    request: float = 60.0
    transfer: float = 180.0
    job: float = 1800.0
    queue: float = 3600.0


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]      # case-insensitive
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def hint_for(status: int, key_env: str) -> str | None:
    if status in (401, 403):
        return f"Check the key in {key_env}"
    if status in (402, 406):
        return "The account may be out of credits"
    if status == 429:
        return "Rate limited by the provider; try again later or lower concurrency"
    return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait, or None. A malformed header is no hint, never an error."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if parsed is None:
            return None
        if parsed.tzinfo is None:                      # RFC 9110 dates are GMT
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        seconds = parsed.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def is_success(status: int) -> bool:
    """Every 2xx is a success, as the providers' own SDKs read it (202 Accepted included)."""
    return 200 <= status < 300


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:                     # a malformed port is no origin the key may go to
        port = -1
    port = port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def host_of(url: str) -> str:
    """Host and port of a URL for a message: never its path, query or user info (they may hold tokens)."""
    scheme, host, port = origin(url)
    if not host:
        return f"a {scheme}: address" if scheme else "an address without a host"
    return host if port in (None, {"http": 80, "https": 443}.get(scheme)) else f"{host}:{port}"


class Redactor:
    """Removes secrets from any text that may reach a user, a log or an exception."""

    def __init__(self, secrets: Iterable[str]):
        parts = set()
        for secret in secrets:
            if secret:
                parts.add(secret)
                parts.update(piece for piece in secret.split(":") if len(piece) >= 6)
        self._secrets = sorted(parts, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class CloudCall:
    """One generation's worth of HTTP for one provider: `async with CloudCall(...) as http: ...`.

    The API key travels only in `auth_headers`, and only to the origins of the configured base URLs
    (`trusted_urls`): a status, result or cancel URL that a provider answer points elsewhere, or a
    redirect to another origin at any hop, is refused with a clear error instead of receiving the key. Every answer body is read with a size
    cap (`max_answer_bytes`; downloads pass their own)."""

    def __init__(self, provider: str, key_env: str, context: RunContext, *, auth_headers: Mapping[str, str],
                 trusted_urls: Iterable[str], secrets: Iterable[str] = (), timeouts: Timeouts = Timeouts(),
                 describe_error: Callable[[Response], str] | None = None, max_answer_bytes: int = 8 * 1024 * 1024,
                 max_attempts: int = 5, backoff_s: float = 0.5, backoff_cap_s: float = 8.0):
        self.provider = provider
        self.key_env = key_env
        self.auth_headers = dict(auth_headers)
        self.trusted = {origin(url) for url in trusted_urls}
        self.redact = Redactor([*secrets, *self.auth_headers.values()])
        self.context = context
        self.timeouts = timeouts
        self.describe_error = describe_error or (lambda response: response.body[:300].decode(errors="replace"))
        self.max_answer_bytes = max_answer_bytes
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "CloudCall":
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect, sock_read=self.timeouts.request),
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.session.close()

    # ---- Cancel --------------------------------------------------------------------------

    def check_interrupt(self) -> None:
        if self.context.interrupted():
            raise GenerationInterrupted(f"{self.provider}: cancelled")

    async def guard(self, awaitable: Awaitable[T], grace_s: float = 0.0) -> T:
        """Await, but give up within INTERRUPT_CHECK_S of Cancel. With `grace_s`, an in-flight
        exchange gets that long to finish first (so a submitted job's id is not lost)."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=INTERRUPT_CHECK_S)
                if done:
                    return task.result()
                if self.context.interrupted():
                    if grace_s:
                        done, _ = await asyncio.wait({task}, timeout=grace_s)
                        if done and not task.cancelled() and task.exception() is None:
                            return task.result()
                    raise GenerationInterrupted(f"{self.provider}: cancelled")
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def sleep(self, seconds: float) -> None:
        await self.guard(asyncio.sleep(seconds))

    # ---- requests ------------------------------------------------------------------------

    def error(self, what: str, response: Response | None = None, job_id: str | None = None,
              detail: str | None = None, hint: str | None = None) -> ProviderError:
        status = response.status if response is not None else None
        if response is not None and detail is None:
            try:
                detail = self.describe_error(response)
            except Exception:  # a garbled error body must not hide the status
                detail = response.body[:300].decode(errors="replace")
        if hint is None and status is not None:
            hint = hint_for(status, self.key_env)
        return ProviderError(self.provider, what, status=status, detail=detail.strip() if detail else None,
                             job_id=job_id, hint=hint)

    def _headers_for(self, url: str, what: str, job_id: str | None, authenticated: bool,
                     headers: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(headers or {})
        if authenticated:
            if origin(url) not in self.trusted:
                host = urllib.parse.urlsplit(url).netloc or url[:60]
                raise ProviderError(self.provider, what, job_id=job_id, detail=(
                    f"the provider pointed to {host}, which is not a configured {self.provider} address"),
                    hint="The API key is only ever sent to the configured base URL; nothing was sent there")
            merged.update(self.auth_headers)
        return merged

    @contextlib.asynccontextmanager
    async def _open(self, method: str, url: str, what: str, job_id: str | None, timeout: aiohttp.ClientTimeout,
                    authenticated: bool, headers: Mapping[str, str] | None = None, data: Any = None,
                    **kwargs) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request and yield the final answer, following redirects here rather than in aiohttp,
        so every hop is checked before anything is sent there:
          - only http(s) addresses are ever fetched;
          - a request that carries the key goes only to the provider's configured addresses, and one
            that carries another credential (an upload token) stays on its own origin: a redirect
            elsewhere is refused, nothing is sent there;
          - 303 (and 301/302 after a POST, as browsers and aiohttp do) continue as a GET without the
            body; 307/308 repeat the method and the body; at most MAX_REDIRECTS hops.
        `data` may be a callable that builds a single-use body (multipart): it is called per hop."""
        headers = dict(headers or {})
        carries_credentials = authenticated or any(name.lower() in CREDENTIAL_HEADERS for name in headers)
        allowed = self.trusted if authenticated else {origin(url)}
        self._check_scheme(url, what, job_id)
        for _ in range(MAX_REDIRECTS + 1):
            body = data() if callable(data) else data
            async with self.session.request(method, url, headers=headers, data=body, timeout=timeout,
                                            allow_redirects=False, **kwargs) as response:
                location = response.headers.get("Location") if response.status in REDIRECT_STATUS else None
                if not location:
                    yield response
                    return
                status = response.status
            target = urllib.parse.urljoin(url, location.strip())
            self._check_scheme(target, what, job_id, status)
            if carries_credentials and origin(target) not in allowed:
                where, secret = ((f"which is not a configured {self.provider} address", "the API key was")
                                 if authenticated else ("another origin", "the request's credentials were"))
                raise ProviderError(self.provider, what, status=status, job_id=job_id,
                                    detail=f"the provider redirected the request to {host_of(target)}, {where}",
                                    hint=f"The redirect was not followed: {secret} not sent there")
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, data = ("HEAD" if method == "HEAD" else "GET"), None
                kwargs.pop("json", None)
                headers = {name: value for name, value in headers.items() if name.lower() != "content-type"}
            url = target
        raise ProviderError(self.provider, what, status=status, job_id=job_id,
                            detail=f"more than {MAX_REDIRECTS} redirects; the last pointed to {host_of(url)}")

    def _check_scheme(self, url: str, what: str, job_id: str | None, status: int | None = None) -> None:
        """Refuse file:, ftp: and any other non-http(s) address (or one without a host) before it is used."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme in FETCHED_SCHEMES and origin(url)[1]:
            return
        shown = ("an address without a host" if scheme in FETCHED_SCHEMES
                 else f"a '{scheme}:' address" if scheme else "an address without a scheme")
        raise ProviderError(self.provider, what, status=status, job_id=job_id,
                            detail=f"the provider gave {shown}; only http(s) addresses are fetched",
                            hint="Nothing was read from it")

    async def _exchange(self, method: str, url: str, what: str, timeout_s: float, max_bytes: int,
                        job_id: str | None, authenticated: bool = False, **kwargs) -> Response:
        """One HTTP exchange (redirects followed by `_open`); the answer body is read up to
        `max_bytes` and refused beyond it."""
        # sock_read per request: a blocking provider call may stay silent far longer than a poll
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect, sock_read=timeout_s)

        async def run() -> Response:
            async with self._open(method, url, what, job_id, timeout, authenticated, **kwargs) as response:
                declared = response.content_length
                if declared is not None and declared > max_bytes:
                    raise self.error(what, job_id=job_id, detail=f"the answer is larger than {max_bytes} bytes "
                                                                 f"({declared}); it was not read")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise self.error(what, job_id=job_id,
                                         detail=f"the answer is larger than {max_bytes} bytes; reading stopped")
                    chunks.append(chunk)
                if declared is not None and size != declared:
                    raise aiohttp.ClientPayloadError(f"got {size} of {declared} bytes")
                return Response(response.status, CIMultiDict(response.headers), b"".join(chunks))

        return await asyncio.wait_for(run(), timeout_s)

    async def request(self, method: str, url: str, what: str, *, job_id: str | None = None, billable: bool = False,
                      authenticated: bool = True, accept: tuple[int, ...] = (), timeout_s: float | None = None,
                      max_bytes: int | None = None, headers: Mapping[str, str] | None = None, **kwargs) -> Response:
        """One HTTP exchange with retries. Every 2xx (and any status in `accept`) is an answer.

        billable=False (polls, uploads, downloads, cancels): retried on 408/429/5xx, timeouts and
        connection errors, with exponential backoff plus jitter, honouring Retry-After.
        billable=True (a submit that costs money): re-sent only when the provider certainly did
        nothing — a 429 refusal, or a connection that never opened. A timeout or reset after the
        request went out is reported, never retried, so a job is never paid for twice.
        """
        timeout_s = timeout_s or self.timeouts.request
        max_bytes = max_bytes or self.max_answer_bytes
        headers = self._headers_for(url, what, job_id, authenticated, headers)
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            self.check_interrupt()
            wait = None
            try:
                response = await self.guard(
                    self._exchange(method, url, what, timeout_s, max_bytes, job_id, authenticated, headers=headers,
                                   **kwargs), grace_s=1.0 if billable else 0.0)
            except (GenerationInterrupted, ProviderError):
                raise
            except aiohttp.ClientConnectorError as exc:      # never connected: nothing was sent
                failure = self.error(what, job_id=job_id, detail=f"cannot connect: {exc.os_error or exc}")
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"connection failed: {type(exc).__name__}"
                if billable:
                    raise self.error(what, job_id=job_id, detail=f"{reason} after the request was sent", hint=(
                        "The job may exist at the provider (and be billed); it was not re-sent to avoid paying "
                        "twice. Check the provider's dashboard before queueing again")) from None
                failure = self.error(what, job_id=job_id, detail=reason)
            else:
                if is_success(response.status) or response.status in accept:
                    return response
                failure = self.error(what, response, job_id)
                retryable = response.status == 429 if billable else response.status in RETRYABLE_STATUS
                if not retryable:
                    raise failure
                wait = _retry_after(response.headers)
            if attempt == self.max_attempts:
                raise failure
            pause = min(wait if wait is not None else delay * (0.5 + random.random()), 30.0)
            self.context.report_status(f"{self.provider}: {what} failed ({failure.detail or failure.status}); "
                                       f"retrying in {pause:.1f} s")
            await self.sleep(pause)
            delay = min(delay * 2, self.backoff_cap_s)
        raise AssertionError("unreachable")

    async def best_effort(self, method: str, url: str, timeout_s: float = 2.0, **kwargs) -> int | None:
        """A request that must go out even after Cancel (the provider's own cancel): no retries,
        no interrupt check, errors swallowed. Returns the HTTP status, or None if it failed."""
        try:
            headers = self._headers_for(url, "cancelling the job", None, True, kwargs.pop("headers", None))
            return (await self._exchange(method, url, "cancelling the job", timeout_s, self.max_answer_bytes, None,
                                         True, headers=headers, **kwargs)).status
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ProviderError):
            return None

    async def json(self, method: str, url: str, what: str, **kwargs) -> tuple[Any, Response]:
        """A request whose answer must be JSON. Malformed JSON is retried like a 5xx for reads,
        and reported (not re-sent) for billable submits. A non-2xx status the caller accepts (e.g. 404:
        this endpoint does not exist) is returned with body None, never parsed: such answers come
        from web servers and proxies as text or HTML far more often than as JSON."""
        billable = kwargs.get("billable", False)
        attempts = 1 if billable else self.max_attempts
        for attempt in range(1, attempts + 1):
            response = await self.request(method, url, what, **kwargs)
            if not is_success(response.status):          # an accepted status: its body is not the answer
                return None, response
            if response.status == 204 or not response.body.strip():
                body = None
            else:
                try:
                    body = response.json()
                except ValueError:
                    body = _MALFORMED
            if body is not _MALFORMED:
                return body, response
            if attempt == attempts:
                raise self.error(what, response, kwargs.get("job_id"), detail="the provider sent malformed JSON",
                                 hint=("The job may exist at the provider; it was not re-sent" if billable else None))
            await self.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.backoff_cap_s))
        raise AssertionError("unreachable")

    # ---- server-sent events -----------------------------------------------------------------

    async def events(self, url: str, what: str, job_id: str | None = None, idle_s: float = 30.0,
                     tick_s: float = 1.0) -> AsyncIterator[str | None]:
        """A server-sent event stream: yields each event's data, and None for a keep-alive comment or
        `tick_s` without news (so the caller checks its budgets and Cancel while the server is
        quiet). Ends when the server closes the stream. A non-2xx answer raises ProviderError;
        a broken stream, or `idle_s` without a byte, raises aiohttp.ClientError / TimeoutError."""
        headers = self._headers_for(url, what, job_id, True, {"Accept": "text/event-stream"})
        self.check_interrupt()
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect, sock_read=None)
        async with self._open("GET", url, what, job_id, timeout, True, headers=headers) as response:
            if not is_success(response.status):
                body = await response.content.read(2048)
                raise self.error(what, Response(response.status, CIMultiDict(response.headers), body), job_id)
            pending, data, silent = b"", [], 0.0
            while True:
                try:
                    # cancelling a pending read loses nothing: bytes that arrive stay buffered
                    chunk = await self.guard(asyncio.wait_for(response.content.readany(), tick_s))
                except asyncio.TimeoutError:
                    silent += tick_s
                    if silent >= idle_s:
                        raise
                    yield None
                    continue
                if not chunk:
                    return
                silent = 0.0
                pending += chunk
                if len(pending) > self.max_answer_bytes:
                    raise self.error(what, job_id=job_id, detail=f"an event is larger than {self.max_answer_bytes} bytes")
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
                    if line.startswith(":"):
                        yield None
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        yield "\n".join(data)
                        data = []

    # ---- downloads ------------------------------------------------------------------------

    async def download(self, url: str, what: str, max_bytes: int, job_id: str | None = None,
                       decode: Callable[[bytes], T] = bytes) -> T:
        """Fetch a result file (no key is sent; streamed, capped at max_bytes; redirects followed to
        http(s) addresses only) or a data: URI, and `decode` it. Any other scheme (file:, ftp:, …)
        is refused at once. Transient failures, truncated transfers and undecodable bytes are retried."""
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            self.check_interrupt()
            try:
                if url.startswith("data:"):
                    return decode(self._data_uri(url, what, max_bytes, job_id))
                response = await self.guard(self._exchange("GET", url, what, self.timeouts.transfer, max_bytes, job_id))
                if not is_success(response.status):
                    raise self.error(what, response, job_id)
                return decode(response.body)
            except GenerationInterrupted:
                raise
            except ProviderError as exc:
                if exc.status not in RETRYABLE_STATUS:
                    raise
                failure = exc
            except ValueError as exc:                      # bytes arrived but are not a valid file
                failure = self.error(what, job_id=job_id, detail=str(exc))
                if url.startswith("data:"):
                    raise failure from None
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                failure = self.error(what, job_id=job_id, detail=f"download failed: {type(exc).__name__}")
            if attempt == self.max_attempts:
                raise failure
            await self.sleep(min(delay * (0.5 + random.random()), 30.0))
            delay = min(delay * 2, self.backoff_cap_s)
        raise AssertionError("unreachable")

    def _data_uri(self, url: str, what: str, max_bytes: int, job_id: str | None) -> bytes:
        header, _, payload = url.partition(",")
        try:
            data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else payload.encode()
        except ValueError:
            raise self.error(what, job_id=job_id, detail="malformed data URI") from None
        if len(data) > max_bytes:
            raise self.error(what, job_id=job_id, detail=f"larger than {max_bytes} bytes")
        return data


_MALFORMED = object()


def poll_delay(elapsed_s: float, first_s: float = 0.25, share: float = 0.15, longest_s: float = 1.5) -> float:
    """Wait before the next status check: soon at first, then backing off in proportion to the
    time already waited (so a result is picked up at most ~15% late), never below `first_s`
    (≤ 4 checks a second) nor above `longest_s`."""
    return min(max(first_s, share * elapsed_s), longest_s)
