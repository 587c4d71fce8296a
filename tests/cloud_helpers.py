"""Shared pieces of the cloud tests: fake keys, backends wired to the emulators, reference images,
and what the emulators' images must look like."""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
from PIL import Image

from emulators.common import seed_colour
from pipelines import DetachedRunContext, GenerationRequest
from pipelines.cloud import (CloudSettings, FalInstantCharacter, KeySource, SegmindInstantID, Timeouts, UploadCache,
                             WaveSpeedInstantCharacter)

# Distinctive fake keys: the leak scans search every channel for them.
TEST_KEYS = {
    "WAVESPEED_API_KEY": "ws-live-7d1f0c2a9b84e6",
    "FAL_KEY": "falid-4411c2:falsecret-93b7e2d0aa",
    "SEGMIND_API_KEY": "SG_5e6f7a8b9c0d1e2f",
}
REFERENCE_RGB = (200, 40, 60)
FAST = Timeouts(connect=2, request=2, transfer=4, job=30)


def reference(size=(96, 128), rgb=REFERENCE_RGB) -> Image.Image:
    return Image.new("RGB", size, rgb)


def request(**changes) -> GenerationRequest:
    base = GenerationRequest(reference=reference(), prompt="a knight in a misty forest", width=512, height=512,
                             seed=1234, steps=20, guidance=3.5, num_images=1, identity_strength=0.9)
    return dataclasses.replace(base, **changes)


def settings(emulator, keys=None, uploads=None, timeouts=FAST, base_url=None, extra_urls=None) -> CloudSettings:
    return CloudSettings(base_url=base_url or emulator.url, keys=KeySource(dict(TEST_KEYS if keys is None else keys)),
                         uploads=uploads or UploadCache(), timeouts=timeouts, extra_urls=extra_urls or {})


def wavespeed(emulator, version="v3", **kw) -> WaveSpeedInstantCharacter:
    return WaveSpeedInstantCharacter(settings(emulator, **kw), api_version=version)


def fal(emulator, **kw) -> FalInstantCharacter:
    return FalInstantCharacter(settings(emulator, base_url=emulator.queue_url, extra_urls={"rest": emulator.rest_url},
                                        **kw))


def segmind(emulator, version="v1", **kw) -> SegmindInstantID:
    return SegmindInstantID(settings(emulator, **kw), api_version=version)


def run(backend, req, context=None):
    return asyncio.run(backend.generate(req, context or DetachedRunContext()))


def halves(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of the left and right halves (ignoring a margin around the seam)."""
    array = np.asarray(image.convert("RGB"), dtype=float)
    width = array.shape[1]
    return array[:, : width // 2 - 4].reshape(-1, 3).mean(0), array[:, width // 2 + 4:].reshape(-1, 3).mean(0)


def assert_emulator_image(image, prompt, seed, index, reference_rgb=REFERENCE_RGB, tolerance=3.0):
    left, right = halves(image)
    assert np.abs(left - reference_rgb).max() <= tolerance, (left, reference_rgb)
    assert np.abs(right - seed_colour(prompt, seed, index)).max() <= tolerance, (right, seed_colour(prompt, seed, index))


class CancelAt(DetachedRunContext):
    """A RunContext whose Cancel fires at a chosen moment (a status text seen, or a time), like
    ComfyUI's interrupt flag; records when it fired."""

    def __init__(self, on_status: str | None = None, after_s: float | None = None):
        """Fire `after_s` seconds after a status containing `on_status` (or after creation)."""
        super().__init__()
        self.on_status = on_status
        self.after_s = after_s or 0.0
        self.fire_at = time.monotonic() + after_s if after_s is not None and on_status is None else None
        self.fired_at: float | None = None
        self._event = threading.Event()

    def report_status(self, text: str) -> None:
        super().report_status(text)
        if self.on_status and self.on_status in text and self.fire_at is None:
            self.fire_at = time.monotonic() + self.after_s

    def fire(self) -> None:
        self.fired_at = time.monotonic()
        self._event.set()

    def interrupted(self) -> bool:
        if self.fire_at is not None and time.monotonic() >= self.fire_at and self.fired_at is None:
            self.fire()
        return self._event.is_set()
