"""The route node in a real ComfyUI: only the chosen branch runs (the other's nodes never execute,
its credits and VRAM are not spent), and it says which branch it chose and why."""
from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import pytest

import face_models
from test_comfyui_instantid import SEGMIND, graph as instantid_graph, local_node

pytestmark = pytest.mark.comfyui

ROUTE = "CharIDRouteLocalOrCloud"


@pytest.fixture(scope="module")
def portrait(comfyui):
    buffer = io.BytesIO()
    face_models.scene((120, 50, 230, 170), size=(320, 240)).save(buffer, "PNG")
    return comfyui.upload_image(buffer.getvalue(), "route_portrait.png")


def route_graph(comfyui, portrait, prefer: str, adapter: str | None = None) -> dict:
    from test_comfyui_cloud import cloud_node

    prompt = instantid_graph(comfyui, portrait, {})
    if adapter:
        prompt["10"]["inputs"]["adapter"] = adapter
    prompt["2"] = local_node(seed=5, steps=2)
    prompt["3"] = cloud_node(SEGMIND, seed=6, width=256, height=256)
    prompt["4"] = {"class_type": ROUTE, "inputs": {"prefer": prefer, "min_free_vram_gb": 12.0,
                                                   "local_images": ["2", 0], "local_info": ["2", 1],
                                                   "cloud_images": ["3", 0], "cloud_info": ["3", 1]}}
    prompt["4s"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "route/4"}}
    prompt["4i"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}}
    prompt["4r"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 2]}}
    return prompt


def run_and_watch(comfyui, prompt: dict) -> tuple[dict, set[str]]:
    """Run a prompt; returns its history entry and the ids of the nodes that executed."""
    async def watch():
        executed = set()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfyui.url}/ws?clientId=route-watch") as ws:
                status, body = await asyncio.to_thread(comfyui.post_json, "/prompt",
                                                       {"prompt": prompt, "client_id": "route-watch"})
                assert status == 200, body
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(message.data)
                    if data["type"] == "executing" and data["data"].get("node"):
                        executed.add(data["data"]["node"])
                    if data["type"] in ("execution_success", "execution_error") and \
                            data["data"].get("prompt_id") == body["prompt_id"]:
                        return body["prompt_id"], executed
        return None, executed

    prompt_id, executed = asyncio.run(asyncio.wait_for(watch(), 240))
    return comfyui.wait(prompt_id, 60), executed


def route_text(entry) -> str:
    return entry["outputs"]["4r"]["text"][0]


def test_auto_on_a_cpu_takes_the_cloud_and_never_runs_the_local_branch(comfyui, emulator_servers, portrait):
    emulator_servers["segmind"].reset()
    entry, executed = run_and_watch(comfyui, route_graph(comfyui, portrait, "auto"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert route_text(entry) == "cloud: ComfyUI runs on the CPU (no GPU for the local branch)"
    assert "3" in executed and not {"2", "10", "9"} & executed          # no local loader, no local generator
    assert emulator_servers["segmind"].counts["submit"] == 1
    info = json.loads(entry["outputs"]["4i"]["text"][0])
    assert info["backend"] == "Segmind InstantID (v1)"                  # the chosen generator's own info


def test_forcing_local_runs_only_the_local_branch(comfyui, emulator_servers, portrait):
    emulator_servers["segmind"].reset()
    entry, executed = run_and_watch(comfyui, route_graph(comfyui, portrait, "local"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert route_text(entry) == "local: forced: prefer = local"
    assert {"2", "10"} <= executed and "3" not in executed
    assert emulator_servers["segmind"].counts["submit"] == 0              # no credits spent
    info = json.loads(entry["outputs"]["4i"]["text"][0])
    assert info["backend"] == "InstantID (local)" and "route" not in info


def test_a_missing_local_file_is_the_reason_and_the_local_loader_never_runs(comfyui, emulator_servers, portrait):
    emulator_servers["segmind"].reset()
    entry, executed = run_and_watch(comfyui, route_graph(comfyui, portrait, "auto", adapter="not-there.bin"))
    assert entry["status"]["status_str"] == "success", entry["status"]      # the loader would fail had it run
    text = route_text(entry)
    assert text.startswith("cloud: local model files missing — node 10: ") and "'not-there.bin' is not in" in text
    assert "10" not in executed
