"""The newest ComfyUI frontend from PyPI (unpacked by scripts/setup.sh --test) with the Vue node
renderer ("Nodes 2.0") on, over the same ComfyUI: the extension loads without an error, every shipped
workflow loads and converts to the same API prompt as with the bundled frontend, the badges show, the
key status reads right, and a workflow runs."""
from __future__ import annotations

import json
import shutil

import pytest

from comfyui_server import ARTIFACTS, REPO_ROOT
from test_browser import (BADGES_JS, CHROMIUM_ARGS, EXTENSION_URL_PART, PACK_READY, WORKFLOWS, saved_outputs,
                          uploaded_reference, use_reference)

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

FRONTENDS = REPO_ROOT / ".comfyui" / "frontend-newest"


@pytest.fixture(scope="module")
def newest(tmp_path_factory, emulator_servers):
    from conftest import start_comfyui

    roots = sorted(FRONTENDS.glob("*/index.html")) if FRONTENDS.is_dir() else []
    assert roots, "the newest frontend is missing: run scripts/setup.sh --test"
    root = roots[-1].parent
    server = start_comfyui(tmp_path_factory.mktemp("comfyui-newest"), emulator_servers, ["--front-end-root", str(root)])
    server.frontend_version = root.name
    try:
        yield server
    finally:
        server.stop()
        server.keep_log("comfyui-server-newest-frontend.log")


@pytest.fixture(scope="module")
def page(newest):
    from playwright.sync_api import sync_playwright

    assert newest.post_json("/settings", {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": True})[0] == 200
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                             args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.pack_errors = []

        def record_console(message):
            location = (message.location or {}).get("url", "")
            if "Invalid workflow" in message.text:
                page.pack_errors.append(f"workflow rejected: {message.text[:500]}")
            if message.type == "error" and (EXTENSION_URL_PART in location or "CharacterIdentity" in message.text):
                page.pack_errors.append(f"console: {message.text} @ {location}")

        page.on("console", record_console)
        page.on("pageerror", lambda error: page.pack_errors.append(f"uncaught: {error}")
                if EXTENSION_URL_PART in (error.stack or "") or "CharacterIdentity" in str(error) else None)
        page.goto(newest.url + "/")
        page.wait_for_function(PACK_READY, timeout=90_000)
        yield page
        browser.close()


def test_the_newest_frontend_runs_the_extension_with_vue_nodes(page, newest):
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == newest.frontend_version
    assert page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is True
    assert page.pack_errors == []


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_workflow_converts_to_the_same_prompt_as_with_the_bundled_frontend(page, name):
    workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())
    converted = page.evaluate(
        "async (wf) => { await window.app.loadGraphData(wf); return (await window.app.graphToPrompt()).output; }",
        workflow)
    expected = json.loads((REPO_ROOT / "workflows" / "api" / f"{name}.json").read_text())
    assert essence(converted) == essence(expected)
    assert page.pack_errors == []


def essence(prompt: dict) -> dict:
    """What a prompt asks for: every node's type and links, and all of the pack's nodes' inputs. Core
    nodes' titles and frontend-only widgets (PreviewAny's "preview" text) differ between frontends."""
    out = {}
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if not node["class_type"].startswith("CharID"):
            inputs = {k: v for k, v in inputs.items() if isinstance(v, list) or node["class_type"] == "LoadImage"}
        out[node_id] = (node["class_type"], inputs)
    return out


def test_the_badges_show_on_vue_nodes(page):
    page.evaluate("() => app.graph.clear()")
    page.evaluate(BADGES_JS, [["CharIDFalInstantCharacter", {"num_images": 2}],
                              ["CharIDPrepareReference", {"background": "#123456"}]])
    page.get_by_text("≈ $0.21 per run").first.wait_for(timeout=10_000)
    page.get_by_text("background", exact=True).first.wait_for(timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-newest-frontend-vue-badges.png"))
    page.evaluate("() => app.graph.clear()")
    assert page.pack_errors == []


def test_the_key_status_reads_the_same(page):
    page.keyboard.press("Control+Comma")
    page.get_by_text("Character Identity", exact=True).first.click()
    box = page.locator(".character-identity-key-status")
    box.locator("[data-provider]").first.wait_for(timeout=10_000)
    lines = box.locator("[data-provider]").all_inner_texts()
    page.keyboard.press("Escape")
    assert lines == ["WaveSpeed AI: configured (environment variable WAVESPEED_API_KEY)",
                     "fal.ai: configured (environment variable FAL_KEY)", "Segmind: configured (keys file)"]


def test_a_cloud_workflow_runs_from_the_newest_frontend(page, newest, emulator_servers):
    for emulator in emulator_servers.values():
        emulator.reset()
    name = uploaded_reference(newest, "jpeg")
    workflow = json.loads((REPO_ROOT / "workflows" / "cloud_providers_side_by_side.json").read_text())
    prompt = page.evaluate(
        "async (wf) => { await window.app.loadGraphData(wf); return (await window.app.graphToPrompt()).output; }",
        workflow)
    images = saved_outputs(newest, newest.run(use_reference(prompt, name)))
    assert len(images) == 3
    assert page.pack_errors == []
