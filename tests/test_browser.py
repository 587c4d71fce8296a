"""The real ComfyUI frontend in Debian's headless Chromium, driven by Playwright.

Playwright comes from PyPI and drives /usr/bin/chromium; it never downloads a browser.
Screenshots are kept in test-artifacts/.
"""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10: the same parser pip carries
    from pip._vendor import tomli as tomllib

import pytest
from PIL import Image

from cloud_helpers import TEST_KEYS
from comfyui_server import ARTIFACTS, PACK_NAME, REPO_ROOT, comfyui_dir

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
EXTENSION_URL_PART = f"/extensions/{PACK_NAME}/"
PACK_READY = "() => window.app?.graph && window.app.extensions?.some(e => e.name === 'CharacterIdentity.ui')"


NEWEST_FRONTENDS = comfyui_dir() / "frontend-newest"         # scripts/setup.sh --test unpacks it beside ComfyUI


@pytest.fixture(scope="module", params=["bundled", "newest"])
def comfyui(request, comfyui, tmp_path_factory, emulator_servers):
    """Every browser test runs twice: on the frontend ComfyUI 0.3.75 ships (classic canvas), and on
    the newest comfyui-frontend-package from PyPI (unpacked by scripts/setup.sh --test) with the Vue
    node renderer ("Nodes 2.0") on — another ComfyUI over the same model folders and emulators."""
    if request.param == "bundled":
        comfyui.frontend = "bundled"
        yield comfyui
        return
    from conftest import link_test_nodes, start_comfyui

    roots = sorted(NEWEST_FRONTENDS.glob("*/index.html")) if NEWEST_FRONTENDS.is_dir() else []
    assert roots, "the newest frontend is missing: run scripts/setup.sh --test"
    base = tmp_path_factory.mktemp("comfyui-newest-frontend")
    shutil.copytree(comfyui.base / "models", base / "models", symlinks=True)
    link_test_nodes(base)
    server = start_comfyui(base, emulator_servers, ["--front-end-root", str(roots[-1].parent)])
    server.local_models, server.instantid_models = comfyui.local_models, comfyui.instantid_models
    server.frontend = roots[-1].parent.name
    try:
        yield server
    finally:
        server.stop()
        server.keep_log("comfyui-server-newest-frontend.log")


def vue_nodes(comfyui) -> bool:
    return comfyui.frontend != "bundled"


@pytest.fixture(scope="module")
def page(comfyui):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: scripts/setup.sh --test installs it"
    # A new ComfyUI user gets a templates dialog over the canvas; this is the setting that skips it.
    assert comfyui.post_json("/settings", {"Comfy.TutorialCompleted": True,
                                           "Comfy.VueNodes.Enabled": vue_nodes(comfyui)})[0] == 200
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.pack_errors = []
        page.frontend = comfyui.frontend

        def record_console(message):
            location = (message.location or {}).get("url", "")
            if "Invalid workflow" in message.text:      # the frontend's schema check of a loaded file
                page.pack_errors.append(f"workflow rejected: {message.text[:500]}")
            if message.type == "error" and (EXTENSION_URL_PART in location or EXTENSION_URL_PART in message.text
                                            or "CharacterIdentity" in message.text):
                page.pack_errors.append(f"console: {message.text} @ {location}")

        def record_page_error(error):
            if EXTENSION_URL_PART in (error.stack or "") or "CharacterIdentity" in str(error):
                page.pack_errors.append(f"uncaught: {error}\n{error.stack}")

        def record_failed_request(request):
            if EXTENSION_URL_PART in request.url:
                page.pack_errors.append(f"request failed: {request.url} {request.failure}")

        page.on("console", record_console)
        page.on("pageerror", record_page_error)
        page.on("requestfailed", record_failed_request)
        page.goto(comfyui.url + "/")
        page.wait_for_function(PACK_READY, timeout=90_000)
        yield page
        browser.close()


def screenshot(page, name: str) -> Path:
    """Kept as a test artifact, one per frontend: browser-<what>-<frontend>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name.replace(".png", f"-{page.frontend}.png")
    page.screenshot(path=str(path))
    return path


def test_node_search_finds_the_prepare_node_and_adds_it(page):
    page.evaluate("() => window.app.graph.clear()")
    # the bundled frontend's search box, or the newer one's combobox dialog
    search = page.locator(".comfy-vue-node-search-container input, [role=dialog] input[role=combobox]").first
    for attempt in range(3):      # right after start-up the canvas may still swallow the first double-click
        page.locator("#graph-canvas").dblclick(position={"x": 600, "y": 400})
        try:
            search.wait_for(timeout=5_000)
            break
        except Exception:
            if attempt == 2:
                raise
    search.fill("Prepare Character Reference")
    option = page.locator("[role=option]", has_text="Prepare Character Reference").first
    option.wait_for(timeout=10_000)
    assert "Character Identity" in option.inner_text()
    search.press("Enter")
    page.wait_for_function("() => window.app.graph._nodes.some(n => n.type === 'CharIDPrepareReference')")
    widgets = page.evaluate(
        "() => window.app.graph._nodes.find(n => n.type === 'CharIDPrepareReference').widgets.map(w => [w.name, w.value])")
    assert widgets == [["background", "#FFFFFF"], ["fit", "pad"], ["size", 1024]]
    shot = screenshot(page, "browser-node-search.png")
    assert shot.stat().st_size > 10_000
    assert page.pack_errors == []


def test_node_library_shows_the_pack_category_tree(page):
    library = page.locator(".node-library-tab-button, button[aria-label^='Node Library']").first
    library.click()
    box = page.locator(".node-lib-search-box input, .comfy-vue-side-bar-container input, "
                       "input[placeholder*='earch']").first
    box.fill("Prepare Character")
    labels = page.locator(".p-tree-node-label, [role=treeitem]")
    labels.filter(has_text="Prepare Character Reference").first.wait_for(timeout=10_000)
    texts = [text.strip() for text in labels.all_inner_texts()]
    assert any(text.startswith("Character Identity") for text in texts)
    assert any(text.startswith("Reference") for text in texts)
    screenshot(page, "browser-node-library.png")
    box.fill("")
    library.click()
    assert page.pack_errors == []


def test_background_swatch_accepts_exactly_what_the_server_accepts(page):
    from PIL import ImageColor

    from pipelines.images import parse_color

    candidates = ["#00FF00", "#0f0", " white ", "WHITE", "RebeccaPurple", "greenish", "", "rgb(1, 2, 3)",
                  "rgba(0,0,0,0)", "hsl(0, 100%, 50%)", "#11223344", "#1234", "#12345G", "transparent",
                  "currentColor", "Canvas", "ButtonText", "inherit", "red;", *sorted(ImageColor.colormap)]
    names, painted = page.evaluate(
        """async ([url, candidates]) => {
            const { cssColor, CSS_COLOUR_NAMES } = await import(url);
            return [[...CSS_COLOUR_NAMES].sort(), candidates.map((text) => cssColor(text))];
        }""",
        [f"{EXTENSION_URL_PART}character_identity.js", candidates],
    )
    assert names == sorted(ImageColor.colormap)

    def server_accepts(text):
        try:
            parse_color(text)
            return True
        except ValueError:
            return False

    assert {text: value is not None for text, value in zip(candidates, painted)} == \
        {text: server_accepts(text) for text in candidates}
    assert painted[0] == "rgb(0, 255, 0)" and painted[candidates.index("greenish")] is None


def uploaded_reference(comfyui, kind: str = "rgba_png") -> str:
    """A reference as users have them: a PNG with transparency (half red character, half
    transparent), an RGB PNG without alpha, or a JPEG. Returns the name LoadImage should load."""
    image = Image.new("RGBA", (80, 40), (0, 0, 0, 0))
    image.paste((200, 30, 30, 255), (0, 0, 40, 40))
    if kind != "rgba_png":                         # no alpha: the right half is plain white
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if kind == "jpeg" else "PNG", **({"quality": 95} if kind == "jpeg" else {}))
    name = "character_reference.jpg" if kind == "jpeg" else "character_reference.png"
    comfyui.upload_image(buffer.getvalue(), name)
    return name


def use_reference(prompt: dict, name: str) -> dict:
    """Point every LoadImage of a converted workflow at `name`, as a user picking their file would."""
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = name
    return prompt


def load_and_convert(page, name: str) -> dict:
    workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())
    prompt = page.evaluate(
        "async (wf) => { await window.app.loadGraphData(wf); return (await window.app.graphToPrompt()).output; }",
        workflow,
    )
    page.wait_for_timeout(300)
    screenshot(page, f"browser-workflow-{name}.png")
    return prompt


def saved_outputs(comfyui, entry) -> list[Image.Image]:
    assert entry["status"]["status_str"] == "success", entry["status"]
    return [Image.open(io.BytesIO(comfyui.output_bytes(image))).convert("RGB")
            for output in entry["outputs"].values() for image in output.get("images", [])]


WORKFLOWS = ["prepare_character_reference", "cloud_providers_side_by_side", "cloud_wavespeed_instantcharacter",
             "cloud_fal_instantcharacter", "cloud_segmind_instantid", "local_instantcharacter", "local_instantid",
             "compare_backends", "hybrid_local_and_cloud", "route_local_or_cloud", "native_instantcharacter",
             "native_instantid"]
# what the workflows load: the example the pack puts into ComfyUI's input folder (the README names it)
README_INPUTS = {"character_identity_example.png"}


def test_every_shipped_workflow_is_covered():
    assert sorted(path.stem for path in (REPO_ROOT / "workflows").glob("*.json")) == sorted(WORKFLOWS)
    assert sorted(path.stem for path in (REPO_ROOT / "workflows" / "api").glob("*.json")) == sorted(WORKFLOWS)
    assert sorted(path.stem for path in (REPO_ROOT / "workflows").glob("*.jpg")) == sorted(WORKFLOWS)
    readme = (REPO_ROOT / "README.md").read_text()
    assert all(f"`{name}.json`" in readme for name in WORKFLOWS) and all(name in readme for name in README_INPUTS)


# The frontend scripts/build_workflows.py converts the twins with: the one CI's ComfyUI (0.3.75) pins.
TWIN_FRONTEND = re.search(r"(?m)^comfyui-frontend-package==(\S+)$",
                          (REPO_ROOT / "scripts" / "constraints.txt").read_text()).group(1)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_api_twin_is_what_the_frontend_makes_of_the_ui_file(page, comfyui, name):
    converted = load_and_convert(page, name)
    twin = json.loads((REPO_ROOT / "workflows" / "api" / f"{name}.json").read_text())
    if page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == TWIN_FRONTEND:
        assert converted == twin                # the twin is exactly what this frontend makes
    else:
        assert essence(converted) == essence(twin)


def essence(prompt: dict) -> dict:
    """What a prompt asks for: every node's type and links, and all of the pack's nodes' inputs. Core
    nodes' titles (PreviewAny is "Preview as Text" in newer frontends) and frontend-only widgets
    (PreviewAny's "preview" text, which newer frontends do not export) differ between frontends."""
    out = {}
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if not node["class_type"].startswith("CharID"):
            inputs = {k: v for k, v in inputs.items() if isinstance(v, list) or node["class_type"] == "LoadImage"}
        out[node_id] = (node["class_type"], inputs)
    return out


@pytest.mark.parametrize("name", WORKFLOWS)
def test_a_workflow_holds_no_key_no_path_and_no_file_of_a_user(name):
    from cloud_helpers import TEST_KEYS

    for path in (REPO_ROOT / "workflows" / f"{name}.json", REPO_ROOT / "workflows" / "api" / f"{name}.json"):
        text = path.read_text()
        assert not any(key in text for key in TEST_KEYS.values())
        assert not re.search(r'"(/|[A-Za-z]:\\\\|~)', text), "an absolute path"
    prompt = json.loads((REPO_ROOT / "workflows" / "api" / f"{name}.json").read_text())
    assert not [field for node in prompt.values() for field in node["inputs"]
                if re.search(r"(?i)key|secret|token|password", field)], "a field for a secret"
    images = {node["inputs"]["image"] for node in prompt.values() if node["class_type"] == "LoadImage"}
    assert images <= README_INPUTS


# Where the workflows' single-file models come from (the publishers docs/local-models.md names), by file
MODEL_REPOSITORIES = {
    "flux1-dev.safetensors": "black-forest-labs/FLUX.1-dev", "ae.safetensors": "black-forest-labs/FLUX.1-dev",
    "clip_l.safetensors": "comfyanonymous/flux_text_encoders",
    "t5xxl_fp16.safetensors": "comfyanonymous/flux_text_encoders",
    "instantcharacter_ip-adapter.bin": "Tencent/InstantCharacter",
    "sd_xl_base_1.0.safetensors": "stabilityai/stable-diffusion-xl-base-1.0", "ip-adapter.bin": "InstantX/InstantID",
    "InstantID/ControlNetModel/diffusion_pytorch_model.safetensors": "InstantX/InstantID",
}
# a file kept in a subfolder of its ComfyUI folder: its path in the repository (default: its name)
REPOSITORY_PATHS = {"InstantID/ControlNetModel/diffusion_pytorch_model.safetensors":
                    "ControlNetModel/diffusion_pytorch_model.safetensors"}


def model_url(name: str) -> str:
    return f"https://huggingface.co/{MODEL_REPOSITORIES[name]}/resolve/main/{REPOSITORY_PATHS.get(name, name)}"
# the files each local workflow's loaders name, by ComfyUI model folder (folders such as SigLIP, DINOv2,
# the IdentityNet and antelopev2 are no single download: no metadata, and the frontend lists no folder)
MISSING_MODELS = {
    "local_instantcharacter": sorted([
        ("diffusion_models", "flux1-dev.safetensors"), ("vae", "ae.safetensors"),
        ("text_encoders", "clip_l.safetensors"), ("text_encoders", "t5xxl_fp16.safetensors"),
        ("instantcharacter", "instantcharacter_ip-adapter.bin")]),
    "local_instantid": sorted([("checkpoints", "sd_xl_base_1.0.safetensors"), ("instantid", "ip-adapter.bin")]),
    "native_instantcharacter": sorted([
        ("diffusion_models", "flux1-dev.safetensors"), ("vae", "ae.safetensors"),
        ("text_encoders", "clip_l.safetensors"), ("text_encoders", "t5xxl_fp16.safetensors"),
        ("instantcharacter", "instantcharacter_ip-adapter.bin")]),
    "native_instantid": sorted([("checkpoints", "sd_xl_base_1.0.safetensors"), ("instantid", "ip-adapter.bin"),
                                ("controlnet", "InstantID/ControlNetModel/diffusion_pytorch_model.safetensors")]),
}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_a_workflow_names_the_pack_and_where_each_model_file_comes_from(name):
    """What ComfyUI-Manager writes into a saved workflow (it offers a missing pack by its registry id:
    pyproject's name, the version in three parts; ComfyUI's own nodes as comfy-core), and what ComfyUI's
    own templates carry (the frontend lists a missing file with its folder and link)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    version = ".".join((project["version"].split(".") + ["0", "0"])[:3])
    nodes = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())["nodes"]
    for node in nodes:
        expected = (project["name"], version) if node["type"].startswith("CharID") else ("comfy-core", None)
        if node["type"] != "Note":                              # frontend-only: no pack at all
            assert node["properties"]["cnr_id"] == expected[0] and node["properties"]["ver"] == (
                expected[1] or node["properties"]["ver"]), node["type"]
    models = [model for node in nodes for model in node["properties"].get("models", [])]
    for model in models:
        assert model["url"] == model_url(model["name"])
    loaders = {node["type"] for node in nodes}
    expected_files = [file for workflow, loader in [("local_instantcharacter", "CharIDInstantCharacterLoader"),
                                                    ("local_instantid", "CharIDInstantIDLoader"),
                                                    ("native_instantcharacter", "CharIDApplyInstantCharacter"),
                                                    ("native_instantid", "CharIDApplyInstantID")]
                      if loader in loaders for file in MISSING_MODELS[workflow]]
    assert sorted((model["directory"], model["name"]) for model in models) == sorted(expected_files)


def test_the_workflows_are_in_the_template_browser_with_their_pictures(comfyui):
    templates = comfyui.get_json("/workflow_templates")
    assert sorted(templates[PACK_NAME]) == sorted(WORKFLOWS)
    for name in WORKFLOWS:
        with comfyui.request(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg") as response:
            assert response.status == 200 and Image.open(io.BytesIO(response.read())).format == "JPEG"


REFERENCE_KINDS = ["rgba_png", "rgb_png", "jpeg"]


@pytest.mark.parametrize("kind", REFERENCE_KINDS)
def test_the_prepare_workflow_converts_and_runs(page, comfyui, kind):
    """Load the file in the real frontend, convert with graphToPrompt, run it on the server, with a
    transparent PNG, a PNG without alpha and a JPEG (LoadImage's placeholder mask for those)."""
    name = uploaded_reference(comfyui, kind)
    prompt = use_reference(load_and_convert(page, "prepare_character_reference"), name)
    assert {node["class_type"] for node in prompt.values()} == {"LoadImage", "CharIDPrepareReference", "SaveImage"}
    [result] = saved_outputs(comfyui, comfyui.run(prompt))
    assert result.size == (1024, 1024)
    assert result.getpixel((5, 5)) == (255, 255, 255)          # padding is white by default
    background = result.getpixel((900, 512))                    # transparent (or white) half
    assert min(background) >= 250
    red, green, blue = result.getpixel((256, 512))
    assert red > 180 and green < 60 and blue < 60              # the character itself
    assert page.pack_errors == []


@pytest.mark.parametrize("kind", REFERENCE_KINDS)
def test_the_cloud_workflow_converts_and_runs_all_three_providers(page, comfyui, emulator_servers, kind):
    for emulator in emulator_servers.values():
        emulator.reset()
    name = uploaded_reference(comfyui, kind)
    prompt = use_reference(load_and_convert(page, "cloud_providers_side_by_side"), name)
    types = sorted(node["class_type"] for node in prompt.values())
    assert types.count("SaveImage") == 3 and types.count("PreviewAny") == 3
    entry = comfyui.run(prompt)
    images = saved_outputs(comfyui, entry)
    assert len(images) == 3 and all(image.size == (1024, 1024) for image in images)
    infos = [json.loads(output["text"][0]) for output in entry["outputs"].values() if "text" in output]
    assert sorted(info["backend"] for info in infos) == [
        "Segmind InstantID (v1)", "WaveSpeed InstantCharacter (v3)", "fal InstantCharacter"]
    assert all(info["seed"] == 42 for info in infos)
    assert sum(emulator.counts["submit"] for emulator in emulator_servers.values()) == 3
    assert page.pack_errors == []


def quick(prompt: dict, class_type: str, **inputs) -> dict:
    """The same graph with a generator made cheap for the tiny test models (fewer steps, a small size)."""
    [node] = [node for node in prompt.values() if node["class_type"] == class_type]
    node["inputs"].update(inputs)
    return prompt


def test_the_local_instantcharacter_workflow_converts_and_runs(page, comfyui):
    """The model names in the file are the real files' names; the test ComfyUI has tiny models under them."""
    name = uploaded_reference(comfyui, "rgba_png")
    prompt = quick(use_reference(load_and_convert(page, "local_instantcharacter"), name),
                   "CharIDInstantCharacterLocal", steps=2, width=64, height=64)
    entry = comfyui.run(prompt)
    [image] = saved_outputs(comfyui, entry)
    assert image.size == (64, 64)
    [info] = [json.loads(output["text"][0]) for output in entry["outputs"].values() if "text" in output]
    assert info["backend"] == "InstantCharacter (local)" and info["seed"] == 42
    assert page.pack_errors == []


def test_the_native_instantcharacter_workflow_converts_and_runs(page, comfyui, native_files):
    """Converted by the frontend, then run on the native tiny files (a FLUX.1 at width 3072 that ComfyUI's
    UNETLoader takes) with DualCLIPLoader + CLIPTextEncode swapped for the test-only conditioning node:
    DualCLIPLoader always builds the full-size T5-XXL (instantcharacter_models.native_workflow_on_tiny_files).
    The LoRA node ships bypassed, so the converted prompt has none."""
    import instantcharacter_models as tiny

    names = tiny.link_native_files(native_files, comfyui.base / "models")
    converted = load_and_convert(page, "native_instantcharacter")
    assert "LoraLoaderModelOnly" not in {node["class_type"] for node in converted.values()}
    prompt = tiny.native_workflow_on_tiny_files(use_reference(converted, uploaded_reference(comfyui, "rgba_png")),
                                                names)
    entry = comfyui.run(prompt, timeout=600)
    [image] = saved_outputs(comfyui, entry)
    assert image.size == (64, 64)
    assert page.pack_errors == []


def test_the_native_instantid_workflow_converts_and_runs(page, comfyui, native_instantid_files):
    """Converted by the frontend, then run on the native tiny files (an SDXL checkpoint ComfyUI's
    CheckpointLoaderSimple takes, the IdentityNet in ComfyUI's original layout) with a photo the tiny face
    detector finds a face in, each CLIPTextEncode swapped for the test-only conditioning node
    (instantid_models.native_workflow_on_tiny_files). The LoRA node ships bypassed, so the converted
    prompt has none."""
    import face_models
    import instantid_models

    names = instantid_models.link_native_comfy_files(native_instantid_files, comfyui.base / "models")
    converted = load_and_convert(page, "native_instantid")
    assert "LoraLoader" not in {node["class_type"] for node in converted.values()}
    buffer = io.BytesIO()
    face_models.scene((120, 50, 230, 170), size=(320, 240)).save(buffer, "PNG")
    reference = comfyui.upload_image(buffer.getvalue(), "character_reference_face.png")
    prompt = instantid_models.native_workflow_on_tiny_files(use_reference(converted, reference), names)
    entry = comfyui.run(prompt, timeout=600)
    [image] = saved_outputs(comfyui, entry)
    assert image.size == (64, 64)
    assert page.pack_errors == []


def test_the_local_instantid_workflow_converts_and_runs(page, comfyui):
    import face_models

    buffer = io.BytesIO()
    face_models.scene((120, 50, 230, 170), size=(320, 240)).save(buffer, "PNG")    # a face the tiny detector finds
    name = comfyui.upload_image(buffer.getvalue(), "character_reference_face.png")
    prompt = quick(use_reference(load_and_convert(page, "local_instantid"), name),
                   "CharIDInstantIDLocal", steps=2, width=96, height=64)
    entry = comfyui.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = {node_id: [Image.open(io.BytesIO(comfyui.output_bytes(image))) for image in output["images"]]
              for node_id, output in entry["outputs"].items() if "images" in output}
    sizes = sorted(image.size for batch in images.values() for image in batch)
    assert sizes == sorted([(96, 64), (96, 64), (320, 240), (112, 112)])    # result, annotated, keypoints, face
    texts = [output["text"][0] for output in entry["outputs"].values() if "text" in output]
    [info] = [json.loads(text) for text in texts if text.startswith("{")]
    assert info["backend"] == "InstantID (local)" and info["style"] == "Watercolor" and info["seed"] == 42
    [report] = [text for text in texts if text.startswith("image 1:")]
    assert report
    assert page.pack_errors == []


def face_reference(comfyui) -> str:
    """A photo with a face the tiny detector finds, under the name the workflows load."""
    import face_models

    buffer = io.BytesIO()
    face_models.scene((120, 50, 230, 170), size=(320, 240)).save(buffer, "PNG")
    return comfyui.upload_image(buffer.getvalue(), "character_reference_face.png")


def outputs_by_type(prompt: dict, entry: dict, class_type: str) -> list[dict]:
    return [entry["outputs"][node_id] for node_id, node in prompt.items()
            if node["class_type"] == class_type and node_id in entry["outputs"]]


def test_the_compare_workflow_runs_every_backend_into_one_captioned_grid(page, comfyui, emulator_servers):
    for emulator in emulator_servers.values():
        emulator.reset()
    prompt = use_reference(load_and_convert(page, "compare_backends"), face_reference(comfyui))
    quick(prompt, "CharIDInstantCharacterLocal", steps=2, width=64, height=64)
    quick(prompt, "CharIDInstantIDLocal", steps=2, width=96, height=64)
    entry = comfyui.run(prompt)
    [grid] = saved_outputs(comfyui, entry)
    [report] = [output["text"][0] for output in outputs_by_type(prompt, entry, "PreviewAny")]
    lines = report.splitlines()
    assert [line.split(" — ")[0] for line in lines[:5]] == [
        "1. InstantCharacter (local)", "2. InstantID (local)", "3. WaveSpeed InstantCharacter (v3)",
        "4. fal InstantCharacter", "5. Segmind InstantID (v1)"]
    assert all("identity" in line for line in lines[:5])
    assert grid.size == (3 * 512, grid.size[1]) and grid.size[1] > 2 * 512
    assert sum(emulator.counts["submit"] for emulator in emulator_servers.values()) == 3
    assert page.pack_errors == []


def test_the_hybrid_workflow_joins_a_local_and_a_cloud_result(page, comfyui, emulator_servers):
    emulator_servers["fal"].reset()
    prompt = use_reference(load_and_convert(page, "hybrid_local_and_cloud"), face_reference(comfyui))
    quick(prompt, "CharIDInstantIDLocal", steps=2, width=96, height=64)
    entry = comfyui.run(prompt)
    [joined] = saved_outputs(comfyui, entry)
    assert joined.size == (96 + 64, 64)         # the 1024² fal image scaled to the portrait's height, beside it
    backends = sorted(json.loads(output["text"][0])["backend"]
                      for output in outputs_by_type(prompt, entry, "PreviewAny"))
    assert backends == ["InstantID (local)", "fal InstantCharacter"]
    assert page.pack_errors == []


def test_the_route_workflow_runs_one_branch_and_says_why(page, comfyui, emulator_servers):
    emulator_servers["segmind"].reset()
    prompt = use_reference(load_and_convert(page, "route_local_or_cloud"), face_reference(comfyui))
    entry = comfyui.run(prompt)
    texts = [output["text"][0] for output in outputs_by_type(prompt, entry, "PreviewAny")]
    assert "cloud: ComfyUI runs on the CPU (no GPU for the local branch)" in texts   # the test ComfyUI has no GPU
    assert emulator_servers["segmind"].counts["submit"] == 1
    [image] = saved_outputs(comfyui, entry)
    assert image.size == (1024, 1024)
    assert page.pack_errors == []


@pytest.mark.parametrize(("name", "node", "backend"), [
    ("cloud_wavespeed_instantcharacter", "wavespeed", "WaveSpeed InstantCharacter (v3)"),
    ("cloud_fal_instantcharacter", "fal", "fal InstantCharacter"),
    ("cloud_segmind_instantid", "segmind", "Segmind InstantID (v1)")])
def test_each_single_provider_workflow_converts_and_runs(page, comfyui, emulator_servers, name, node, backend):
    emulator = emulator_servers[node]
    emulator.reset()
    reference = uploaded_reference(comfyui, "rgb_png")
    prompt = use_reference(load_and_convert(page, name), reference)
    entry = comfyui.run(prompt)
    [image] = saved_outputs(comfyui, entry)
    [info] = [json.loads(output["text"][0]) for output in entry["outputs"].values() if "text" in output]
    assert info["backend"] == backend and info["seed"] == 42 and emulator.counts["submit"] == 1
    if node == "segmind":                     # the style and the pose photo are wired in
        [generator] = [n for n in prompt.values() if n["class_type"] == "CharIDSegmindInstantID"]
        assert generator["inputs"]["style"] == "Watercolor" and isinstance(generator["inputs"]["pose_image"], list)
    assert page.pack_errors == []


@pytest.mark.parametrize("name", WORKFLOWS)
def test_shipped_workflows_use_fixed_seeds(page, name):
    """A shared workflow must give the same images again: no seed is set to randomize."""
    load_and_convert(page, name)
    controls = page.evaluate("""() => window.app.graph._nodes.flatMap(
        (n) => (n.widgets ?? []).filter((w) => w.name === 'control_after_generate').map((w) => w.value))""")
    assert all(value == "fixed" for value in controls)
    if name == "cloud_providers_side_by_side":
        assert len(controls) == 3


# ---- the browser side: prices, key status, both renderers, no server side ----------------------------

# The badge texts of some nodes as the canvas draws them, read until they settle. Drawn, because a
# native price badge (ComfyUI 0.9.1 and newer) is in node.badges on some frontends (1.49) and drawn
# from a separate row source on others (1.58); it is computed asynchronously (JSONata), empty until then.
SETTLED_TEXTS_JS = """async (nodes) => {
  const drawn = (node) => {
    const ctx = document.createElement("canvas").getContext("2d");
    const texts = [], fillText = ctx.fillText.bind(ctx);
    ctx.fillText = (text, ...rest) => { texts.push(String(text)); return fillText(text, ...rest); };
    node.drawBadges(ctx);
    return texts.filter((t) => t.trim() && !t.includes("comfyui"));
  };
  const texts = () => JSON.stringify(nodes.map(drawn));
  let last = texts(), same = 0;
  for (let i = 0; i < 100 && same < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const now = texts();
    same = now === last ? same + 1 : 0;
    last = now;
  }
  app.canvas.setDirty(true, true);
  return JSON.parse(last);
}"""

BADGES_JS = """async (specs) => {
  const nodes = [];
  for (const [type, widgets] of specs) {
    const node = LiteGraph.createNode(type);
    node.pos = [100 + 40 * nodes.length, 100];
    app.graph.add(node);
    for (const [name, value] of Object.entries(widgets)) node.widgets.find((w) => w.name === name).value = value;
    nodes.push(node);
  }
  return await (""" + SETTLED_TEXTS_JS + """)(nodes);
}"""


def native_price_badges(comfyui) -> bool:
    """Whether this ComfyUI's nodes declare their price as a native badge (then the frontend draws it)."""
    return bool(comfyui.get_json("/object_info/CharIDFalInstantCharacter")["CharIDFalInstantCharacter"].get(
        "price_badge"))


def test_cloud_nodes_show_their_price_for_the_current_widgets(page):
    page.evaluate("() => app.graph.clear()")
    badges = page.evaluate(BADGES_JS, [
        ["CharIDFalInstantCharacter", {"width": 1024, "height": 1024, "num_images": 2}],
        ["CharIDFalInstantCharacter", {"image_size": "square", "num_images": 1}],
        ["CharIDSegmindInstantID", {"num_images": 3}],
        ["CharIDWaveSpeedInstantCharacter", {}],
        ["CharIDPrepareReference", {"background": "#123456"}],
        ["CharIDPrepareReference", {"background": "greenish"}],
        ["CharIDInstantIDLocal", {}]])
    assert badges == [["≈ $0.21 per run"], ["≈ $0.026 per run"], ["≈ $0.025 per run"], ["price: see provider"],
                      ["background"], ["✕ not a colour"], []]
    assert page.pack_errors == []


def test_the_settings_show_which_keys_are_configured_and_never_a_key(page, comfyui):
    from cloud_helpers import TEST_KEYS

    answer = comfyui.get_json("/character_identity/status")
    assert not any(key in json.dumps(answer) for key in TEST_KEYS.values())
    page.keyboard.press("Control+Comma")
    page.get_by_text("Character Identity", exact=True).first.click()
    box = page.locator(".character-identity-key-status")
    box.locator("[data-provider]").first.wait_for(timeout=10_000)
    lines = box.locator("[data-provider]").all_inner_texts()
    screenshot(page, "browser-key-status.png")
    page.keyboard.press("Escape")
    assert lines == ["WaveSpeed AI: configured (environment variable WAVESPEED_API_KEY)",
                     "fal.ai: configured (environment variable FAL_KEY)", "Segmind: configured (keys file)"]
    assert not any(key in page.content() for key in TEST_KEYS.values())
    assert page.pack_errors == []


def test_badges_show_in_the_vue_node_renderer_too(page, comfyui):
    """Nodes 2.0 never calls onDrawForeground; the swatch and the price are badges, which it draws."""
    page.evaluate("() => app.graph.clear()")
    page.evaluate("async () => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
    try:
        page.evaluate(BADGES_JS, [["CharIDFalInstantCharacter", {"num_images": 2}],
                                  ["CharIDPrepareReference", {"background": "#123456"}]])
        # the extension's badge is one element; a native one (in the node's header) is two: "≈", "$0.21 per run"
        page.wait_for_function("""() => [...document.querySelectorAll('*')].some((e) =>
            e.childElementCount === 0 && e.textContent.trim() === '≈ $0.21 per run') ||
            [...document.querySelectorAll('[data-testid=credit-badge-required]')].some((e) =>
              `${e.textContent.trim()} ${e.nextElementSibling?.textContent.trim()}` === '≈ $0.21 per run')""",
                               timeout=10_000)
        page.wait_for_function("""() => [...document.querySelectorAll('*')].some((e) =>
            e.childElementCount === 0 && e.textContent.trim() === 'background' &&
            [e, e.parentElement, e.parentElement?.parentElement].some(
                (n) => n && getComputedStyle(n).backgroundColor === 'rgb(18, 52, 86)'))""", timeout=10_000)
        screenshot(page, "browser-vue-nodes-badges.png")
    finally:
        page.evaluate("async (on) => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on)",
                      vue_nodes(comfyui))
        page.evaluate("() => app.graph.clear()")
    assert page.pack_errors == []


def test_without_the_server_side_the_page_still_works(page, comfyui):
    """An old or half-installed pack: the status route answers 404. No error, no price, a clear line in
    the settings; the rest of the extension (the swatch) still works."""
    page.route("**/character_identity/status", lambda route: route.fulfill(status=404, body="not found"))
    try:
        page.reload()
        page.wait_for_function(PACK_READY, timeout=90_000)
        badges = page.evaluate(BADGES_JS, [["CharIDFalInstantCharacter", {}],
                                           ["CharIDPrepareReference", {"background": "white"}]])
        # a native price badge comes with the node's definition, not from the pack's route
        assert badges == [["≈ $0.10 per run"] if native_price_badges(comfyui) else [], ["background"]]
        page.keyboard.press("Control+Comma")
        page.get_by_text("Character Identity", exact=True).first.click()
        page.get_by_text("the pack's server side did not answer").first.wait_for(timeout=10_000)
        page.keyboard.press("Escape")
        assert page.pack_errors == []
    finally:
        page.unroute("**/character_identity/status")
        page.reload()
        page.wait_for_function(PACK_READY, timeout=90_000)


def test_badges_survive_collapse_resize_and_clone(page):
    result = page.evaluate("""async () => {
        app.graph.clear();
        const node = LiteGraph.createNode("CharIDPrepareReference");
        node.pos = [100, 100];
        app.graph.add(node);
        node.widgets.find((w) => w.name === "background").value = "navy";
        const texts = (n) => n.badges.map((b) => (typeof b === "function" ? b() : b)?.text).filter((t) => t && !t.includes("comfyui"));
        node.collapse(); app.canvas.draw(true, true); node.collapse();
        node.setSize([node.size[0] * 2, node.size[1] * 1.5]); app.canvas.draw(true, true);
        const copy = node.clone(); copy.pos = [500, 100]; app.graph.add(copy);
        copy.widgets.find((w) => w.name === "background").value = "nope";
        app.canvas.draw(true, true);
        const fal = LiteGraph.createNode("CharIDFalInstantCharacter"); app.graph.add(fal);
        const falCopy = fal.clone(); app.graph.add(falCopy);
        return [texts(node), texts(copy), ...await (""" + SETTLED_TEXTS_JS + """)([falCopy])];
    }""")
    assert result == [["background"], ["✕ not a colour"], ["≈ $0.10 per run"]]
    page.evaluate("() => app.graph.clear()")
    assert page.pack_errors == []


def click_in_dialog(page, text: str, tag: str = "*", timeout: float = 30_000) -> None:
    """Click the dialog's element showing `text`, from the page: frontend 1.49 (ComfyUI 0.33's) keeps
    re-rendering the template dialog's entries, so none is "stable" long enough for Playwright's click."""
    page.wait_for_function("""([text, tag]) => {
        const entry = [...document.querySelectorAll(`[role=dialog] ${tag}`)].find(
            (e) => e.childElementCount === 0 && e.textContent.trim() === text);
        entry?.click();
        return Boolean(entry);
    }""", arg=[text, tag], timeout=timeout)


def open_from_template_browser(page, name: str) -> None:
    """As a user does: Browse Templates → the pack's entry → the workflow's card."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        # Frontend 1.49 closes "the template dialog" by its key once the last template has fully loaded,
        # a moment after its nodes are on the canvas: a dialog opened right then closes under the test.
        page.wait_for_function("() => !document.querySelector('[role=dialog]')", timeout=15_000)
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        try:
            # in the dialog: Nodes 2.0 also shows the pack's name as a badge on its nodes behind it
            click_in_dialog(page, PACK_NAME, timeout=10_000)
            page.evaluate("() => app.graph.clear()")          # so the wait below sees the new graph arrive
            click_in_dialog(page, name, "h3", timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    expected = sorted(node["type"] for node in json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())["nodes"])
    page.wait_for_function("(types) => JSON.stringify(app.graph._nodes.map((n) => n.type).sort()) === "
                           "JSON.stringify(types)", arg=expected, timeout=15_000)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_each_workflow_opens_from_the_template_browser(page, name):
    open_from_template_browser(page, name)
    loaded = sorted(page.evaluate("() => app.graph._nodes.map((n) => n.type)"))
    shipped = sorted(node["type"] for node in json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())["nodes"])
    assert loaded == shipped
    assert page.pack_errors == []


# Records every text ComfyUI's own progress-text preview shows on the fal node, as the user sees it.
STATUS_RECORDER_JS = """() => {
    window.__statusSeen = [];
    const node = app.graph._nodes.find((n) => n.type === "CharIDFalInstantCharacter");
    const timer = setInterval(() => {
        const text = node.widgets?.find((w) => w.name === "$$node-text-preview")?.value;
        if (text && window.__statusSeen.at(-1) !== text) window.__statusSeen.push(String(text));
    }, 50);
    setTimeout(() => clearInterval(timer), 90_000);
}"""


def test_a_cloud_workflow_queued_from_the_page_shows_its_image_on_the_canvas(page, comfyui, emulator_servers):
    emulator_servers["fal"].reset()
    name = uploaded_reference(comfyui, "rgb_png")
    open_from_template_browser(page, "cloud_fal_instantcharacter")
    page.evaluate("""(name) => {
        for (const node of app.graph._nodes.filter((n) => n.type === "LoadImage"))
            node.widgets.find((w) => w.name === "image").value = name;
    }""", name)
    # the job waits in fal's queue, then runs: the node shows what the server says as it happens
    emulator_servers["fal"].queue_s, emulator_servers["fal"].processing_s = 2.0, 2.0
    page.evaluate(STATUS_RECORDER_JS)
    try:
        page.evaluate("() => app.queuePrompt(0, 1)")
        page.wait_for_function("() => window.__statusSeen.some((t) => t.includes('in queue (position 2)'))",
                               timeout=60_000)
        screenshot(page, "browser-fal-workflow-in-queue.png")
        page.wait_for_function("() => window.__statusSeen.some((t) => t.includes('running') && "
                               "t.includes('Loading InstantCharacter'))", timeout=60_000)
        page.wait_for_function("() => app.graph._nodes.some((n) => n.type === 'SaveImage' && n.imgs?.length)",
                               timeout=60_000)
    finally:
        emulator_servers["fal"].queue_s, emulator_servers["fal"].processing_s = 0.0, 0.3
    screenshot(page, "browser-fal-workflow-result-on-canvas.png")
    assert emulator_servers["fal"].counts["submit"] == 1
    seen = page.evaluate("() => window.__statusSeen")
    assert not any(TEST_KEYS["FAL_KEY"] in text for text in seen)
    assert page.pack_errors == []


# The missing model files the frontend shows after a workflow loaded, as (directory, name, link): frontend
# 1.32's "Missing Models" dialog ("directory / name", the download link as its title), or, from 1.40 on,
# the Missing Models group of the errors panel (name, folder below it, and a Copy URL button that copies
# the file's page: /blob/ where the download link has /resolve/). None until either is there.
MISSING_MODELS_SHOWN_JS = """async (read) => {
  const dialog = [...document.querySelectorAll("[role=dialog]")].find((d) => d.innerText.includes("Missing Models"));
  if (dialog && !read) return [];
  if (dialog)
    return [...dialog.querySelectorAll("span[title]")].filter((s) => s.textContent.includes(" / ")).map(
      (s) => [...s.textContent.split(" / ").map((t) => t.trim()), s.title]);
  const group = document.querySelector("[data-testid=error-group-missing-model]");
  if (!group) {
    [...document.querySelectorAll("button")].find((b) => b.textContent.trim() === "View details")?.click();
    return null;
  }
  if (!read) return [];
  const copied = [];
  navigator.clipboard.writeText = async (text) => { copied.push(text); };
  const shown = [];
  // a file's name: a button with the name as its title (a plain span without metadata, folder "Unknown")
  const entries = [...group.querySelectorAll("[title]:not([aria-label])")];
  for (const entry of entries.filter((named) => named.title === named.textContent.trim())) {
    const copy = entry.parentElement.querySelector("[aria-label='Copy URL']");
    copied.length = 0;
    copy?.click();
    await new Promise((resolve) => setTimeout(resolve, 50));
    shown.push([entry.parentElement.nextElementSibling?.textContent.trim() ?? "", entry.title, copied[0] ?? ""]);
  }
  return shown;
}"""


@pytest.fixture(scope="module")
def page_without_models(comfyui, page, tmp_path_factory, emulator_servers):
    """The same frontend on a ComfyUI with no model files at all, as someone who was sent a workflow has it."""
    from conftest import start_comfyui

    server = start_comfyui(tmp_path_factory.mktemp("comfyui-no-models"), emulator_servers, comfyui.extra_args)
    try:
        assert server.post_json("/settings", {"Comfy.TutorialCompleted": True,
                                              "Comfy.VueNodes.Enabled": vue_nodes(comfyui)})[0] == 200
        other = page.context.browser.new_page(viewport={"width": 1400, "height": 900})
        other.frontend = page.frontend
        other.goto(server.url + "/")
        other.wait_for_function(PACK_READY, timeout=90_000)
        yield other
        other.close()
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["local_instantcharacter", "local_instantid", "native_instantid"])
def test_a_local_workflow_opened_without_its_files_lists_each_with_its_folder_and_link(page_without_models, name):
    """The frontend's own missing-models warning (on by default in both: Comfy.Workflow.ShowMissingModelsWarning,
    Comfy.RightSidePanel.ShowErrorsTab) names every single-file model with where it goes and where to get it."""
    page = page_without_models
    # start from a workflow with no model files: no warning left over from the last test (a dialog that
    # is still closing would be reused and vanish, an errors panel would show the last workflow's files)
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.querySelector('[role=dialog]')", timeout=15_000)
    open_workflow = "async (wf) => { await app.loadGraphData(wf); }"
    page.evaluate(open_workflow, json.loads((REPO_ROOT / "workflows" / "prepare_character_reference.json").read_text()))
    page.wait_for_function("() => !document.querySelector('[role=dialog], [data-testid=error-group-missing-model]')",
                           timeout=15_000)
    page.evaluate(open_workflow, json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text()))
    for _ in range(100):                        # the check is asynchronous; the warning comes when it is done
        if page.evaluate(MISSING_MODELS_SHOWN_JS, False) is not None:
            break
        page.wait_for_timeout(200)
    screenshot(page, f"browser-missing-models-{name}.png")
    shown = page.evaluate(MISSING_MODELS_SHOWN_JS, True)
    assert shown is not None, "no missing-models warning"
    assert sorted((directory, file, link.replace("/blob/", "/resolve/")) for directory, file, link in shown) == [
        (directory, file, model_url(file))
        for directory, file in MISSING_MODELS[name]]
