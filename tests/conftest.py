"""Shared fixtures. Unit tests import `pipelines` directly (pyproject sets pythonpath = ["."]);
end-to-end tests share one real ComfyUI server per session."""
from __future__ import annotations

import pytest

from comfyui_server import ComfyUIServer


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    server = ComfyUIServer(tmp_path_factory.mktemp("comfyui-base")).start()
    try:
        yield server
    finally:
        server.stop()
        server.keep_log("comfyui-server.log")


# ---- provider emulators (in-process servers on 127.0.0.1), shared by a session, reset per test ----

def _emulator(kind):
    from cloud_helpers import TEST_KEYS
    from emulators.fal import FalEmulator
    from emulators.segmind import SegmindEmulator
    from emulators.wavespeed import WaveSpeedEmulator

    factory = {"wavespeed": (WaveSpeedEmulator, "WAVESPEED_API_KEY"), "fal": (FalEmulator, "FAL_KEY"),
               "segmind": (SegmindEmulator, "SEGMIND_API_KEY")}[kind]
    return factory[0](TEST_KEYS[factory[1]]).start()


@pytest.fixture(scope="session")
def emulator_servers():
    servers = {kind: _emulator(kind) for kind in ("wavespeed", "fal", "segmind")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def wavespeed_emulator(emulator_servers):
    emulator_servers["wavespeed"].reset()
    yield emulator_servers["wavespeed"]
    emulator_servers["wavespeed"].reset()


@pytest.fixture
def fal_emulator(emulator_servers):
    emulator_servers["fal"].reset()
    yield emulator_servers["fal"]
    emulator_servers["fal"].reset()


@pytest.fixture
def segmind_emulator(emulator_servers):
    emulator_servers["segmind"].reset()
    yield emulator_servers["segmind"]
    emulator_servers["segmind"].reset()
