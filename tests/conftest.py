"""Shared fixtures. Unit tests import `pipelines` directly (pyproject sets pythonpath = ["."]);
end-to-end tests share one real ComfyUI server per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach for a model hub: set before anything imports transformers,
# which reads it once at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from comfyui_server import ComfyUIServer


def start_comfyui(base, emulator_servers, extra_args: list[str], keys: bool = True) -> ComfyUIServer:
    """A real ComfyUI in `base`, its cloud nodes pointed at the emulators. WaveSpeed and fal keys come
    from the environment, Segmind's from a keys file (both documented ways); keys=False: no key at all
    (the keys file, read at every call, is there for a test to write)."""
    from cloud_helpers import TEST_KEYS

    keys_file = base / "keys.ini"
    keys_file.write_text(f"[keys]\nSEGMIND_API_KEY = {TEST_KEYS['SEGMIND_API_KEY'] if keys else ''}\n")
    env = {
        "WAVESPEED_BASE_URL": emulator_servers["wavespeed"].url,
        "FAL_QUEUE_URL": emulator_servers["fal"].queue_url,
        "FAL_REST_URL": emulator_servers["fal"].rest_url,
        "SEGMIND_BASE_URL": emulator_servers["segmind"].url,
        "WAVESPEED_API_KEY": TEST_KEYS["WAVESPEED_API_KEY"] if keys else "",
        "FAL_KEY": TEST_KEYS["FAL_KEY"] if keys else "",
        "SEGMIND_API_KEY": "",
        "CHARACTER_IDENTITY_KEYS": str(keys_file),
        "CHARACTER_IDENTITY_REQUEST_TIMEOUT": "3",
        "HF_HUB_OFFLINE": "1",
    }
    server = ComfyUIServer(base, env=env, extra_args=extra_args).start()
    server.keys_file = keys_file
    return server


TEST_NODES = Path(__file__).resolve().parent / "comfyui_test_nodes" / "charid_test_flux_conditioning"


def link_test_nodes(base) -> None:
    """The test-only node folder (FLUX conditioning at the tiny text widths, SDXL conditioning: ComfyUI
    builds T5 and SDXL's CLIPs only at full size) into a test ComfyUI's custom_nodes, before it starts.
    Never part of the pack."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / TEST_NODES.name
    if not link.exists():
        link.symlink_to(TEST_NODES, target_is_directory=True)


@pytest.fixture(scope="session")
def native_files(tmp_path_factory):
    """The native InstantCharacter files (a FLUX.1 at width 3072 with one double and one single block,
    the real-size VAE, a LoRA, the adapter, an all-in-one checkpoint), built once per session on first use."""
    from instantcharacter_models import build_native_files

    return build_native_files(tmp_path_factory.mktemp("native-files"))


@pytest.fixture(scope="session")
def native_instantid_files(tmp_path_factory):
    """The native InstantID files a real ComfyUI loads (an all-in-one SDXL checkpoint with the tiny UNet
    and a real-size VAE, a LoRA, the IdentityNet in ComfyUI's original layout, the adapter, an SD 1.5
    UNet), built once per session on first use."""
    from instantid_models import build_native_comfy_files

    return build_native_comfy_files(tmp_path_factory.mktemp("native-instantid-files"))


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory, emulator_servers):
    """One real ComfyUI for the session, with the tiny local models in its model folders."""
    base = tmp_path_factory.mktemp("comfyui-base")
    # tiny local models in the user's model folders, before ComfyUI lists them
    from instantcharacter_models import build_tiny_files, install_into_models

    local_models = install_into_models(build_tiny_files(tmp_path_factory.mktemp("tiny-models")), base / "models")
    import face_models
    import instantid_models

    instantid_files = instantid_models.build_tiny_instantid(tmp_path_factory.mktemp("tiny-instantid"))
    antelopev2 = face_models.antelopev2(tmp_path_factory.mktemp("tiny-antelopev2") / "antelopev2")
    instantid_names = instantid_models.install_into_models(instantid_files, antelopev2, base / "models")
    link_test_nodes(base)
    server = start_comfyui(base, emulator_servers, ["--preview-method", "auto"])
    server.local_models = local_models
    server.instantid_models = instantid_names
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
