"""Cloud backends: WaveSpeed InstantCharacter, fal InstantCharacter, Segmind InstantID."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .base import CloudBackend, CloudSettings
from .fal import FalInstantCharacter
from .keys import KeySource
from .segmind import SegmindInstantID
from .transport import MissingKeyError, ProviderError, Timeouts
from .uploads import UploadCache
from .wavespeed import WaveSpeedInstantCharacter

REQUEST_TIMEOUT_ENV = "CHARACTER_IDENTITY_REQUEST_TIMEOUT"
JOB_TIMEOUT_ENV = "CHARACTER_IDENTITY_JOB_TIMEOUT"


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def settings_from_environment(backend: type[CloudBackend], upload_cache: Path | None = None,
                              environ: Mapping[str, str] | None = None) -> CloudSettings:
    """Base URL (e.g. WAVESPEED_BASE_URL), keys and timeouts as the environment says, read per call."""
    environ = os.environ if environ is None else environ
    defaults = Timeouts()
    request = _seconds(environ, REQUEST_TIMEOUT_ENV, defaults.request)
    timeouts = Timeouts(connect=defaults.connect, request=request, transfer=3 * request,
                        job=_seconds(environ, JOB_TIMEOUT_ENV, defaults.job))
    return CloudSettings(base_url=backend.base_url_from(environ), keys=KeySource(environ),
                         uploads=UploadCache(upload_cache), timeouts=timeouts)


def backend_from_environment(provider: str, api_version: str | None = None, upload_cache: Path | None = None,
                             environ: Mapping[str, str] | None = None) -> CloudBackend:
    """The backend for "wavespeed", "fal" or "segmind", configured from the environment."""
    environ = os.environ if environ is None else environ
    if provider == "wavespeed":
        return WaveSpeedInstantCharacter(settings_from_environment(WaveSpeedInstantCharacter, upload_cache, environ),
                                         api_version or "v3")
    if provider == "fal":
        rest_url = environ.get(FalInstantCharacter.rest_url_env) or FalInstantCharacter.default_rest_url
        return FalInstantCharacter(settings_from_environment(FalInstantCharacter, upload_cache, environ), rest_url)
    if provider == "segmind":
        return SegmindInstantID(settings_from_environment(SegmindInstantID, upload_cache, environ), api_version or "v1")
    raise ValueError(f"unknown cloud provider {provider!r}")


__all__ = [
    "CloudBackend", "CloudSettings", "FalInstantCharacter", "KeySource", "MissingKeyError", "ProviderError",
    "SegmindInstantID", "Timeouts", "UploadCache", "WaveSpeedInstantCharacter", "backend_from_environment", "settings_from_environment",
]
