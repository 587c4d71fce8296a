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
