"""Cloud backends: WaveSpeed InstantCharacter, fal InstantCharacter, Segmind InstantID.

A new provider is one file implementing `CloudBackend` plus one entry in `PROVIDERS`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .base import CloudBackend, CloudSettings
from .fal import FalInstantCharacter
from .keys import KeySource
from .segmind import SegmindInstantID
from .slots import JobSlots
from .transport import MissingKeyError, ProviderError, Timeouts
from .uploads import UploadCache
from .wavespeed import WaveSpeedInstantCharacter

PROVIDERS: dict[str, type[CloudBackend]] = {
    backend.provider: backend for backend in (WaveSpeedInstantCharacter, FalInstantCharacter, SegmindInstantID)
}
REQUEST_TIMEOUT_ENV = "CHARACTER_IDENTITY_REQUEST_TIMEOUT"


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def max_jobs_env(backend: type[CloudBackend]) -> str:
    return f"CHARACTER_IDENTITY_MAX_JOBS_{backend.provider.upper()}"


def settings_from_environment(backend: type[CloudBackend], state_dir: Path | str | None = None,
                              environ: Mapping[str, str] | None = None) -> CloudSettings:
    """Base URLs (e.g. WAVESPEED_BASE_URL), keys, timeouts and the job limit as the environment says,
    read per call. `state_dir` holds the upload cache and the job slots (none: in memory, no limit)."""
    environ = os.environ if environ is None else environ
    defaults = Timeouts()
    request = _seconds(environ, REQUEST_TIMEOUT_ENV, defaults.request)
    timeouts = Timeouts(connect=defaults.connect, request=request, transfer=3 * request,
                        job=_seconds(environ, backend.timeout_envs["job"], defaults.job),
                        queue=_seconds(environ, backend.timeout_envs["queue"], defaults.queue))
    slots = None
    if state_dir is not None:
        try:
            limit = int(environ.get(max_jobs_env(backend), backend.default_max_jobs))
        except ValueError:
            limit = backend.default_max_jobs
        slots = JobSlots(Path(state_dir) / "job_slots", max(0, limit))
    return CloudSettings(base_url=backend.base_url_from(environ), keys=KeySource(environ),
                         uploads=UploadCache(Path(state_dir) / "upload_cache.json" if state_dir else None),
                         timeouts=timeouts, extra_urls=backend.extra_urls_from(environ), slots=slots)


def backend_from_environment(provider: str, api_version: str | None = None, state_dir: Path | str | None = None,
                             environ: Mapping[str, str] | None = None) -> CloudBackend:
    """The backend registered as `provider` ("wavespeed", "fal", "segmind"), configured from the environment."""
    try:
        backend = PROVIDERS[provider]
    except KeyError:
        raise ValueError(f"unknown cloud provider {provider!r}; known: {', '.join(PROVIDERS)}") from None
    return backend(settings_from_environment(backend, state_dir, environ), api_version)


__all__ = [
    "PROVIDERS", "CloudBackend", "JobSlots", "CloudSettings", "FalInstantCharacter", "KeySource", "MissingKeyError",
    "ProviderError", "SegmindInstantID", "Timeouts", "UploadCache", "WaveSpeedInstantCharacter",
    "backend_from_environment", "settings_from_environment",
]
