"""What a first-time user has, in a real ComfyUI: no model files at all, keys for some providers or
none, and no image uploaded. The shipped workflows load the pack's example reference; the route runs
the branch it can, the compare grid runs what is available and shows the rest as skipped."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from cloud_helpers import TEST_KEYS
from comfyui_server import REPO_ROOT, error_message

pytestmark = pytest.mark.comfyui

EXAMPLE = "character_identity_example.png"
SHIPPED_EXAMPLE = REPO_ROOT / "workflows" / "inputs" / EXAMPLE
WORKFLOWS = sorted(path.stem for path in (REPO_ROOT / "workflows" / "api").glob("*.json"))


def users_own_picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (20, 160, 60)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bare(tmp_path_factory, emulator_servers):
    """A ComfyUI with empty model folders and no key (tests write the keys file, read at every call),
    whose input folder already holds a user's own file under the example's name."""
    from conftest import start_comfyui

    base = tmp_path_factory.mktemp("comfyui-bare")
    (base / "input").mkdir()
    (base / "input" / EXAMPLE).write_bytes(users_own_picture())
    server = start_comfyui(base, emulator_servers, [], keys=False)
    try:
        yield server
    finally:
        server.stop()
        server.keep_log("comfyui-server-bare.log")


@pytest.fixture
def emulators(emulator_servers):
    for emulator in emulator_servers.values():
        emulator.reset()
    return emulator_servers


def use_keys(server, *names: str) -> None:
    server.keys_file.write_text("[keys]\n" + "".join(f"{name} = {TEST_KEYS[name]}\n" for name in names))


def api_twin(name: str) -> dict:
    return json.loads((REPO_ROOT / "workflows" / "api" / f"{name}.json").read_text())


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def untouched(emulator) -> bool:
    return not emulator.counts and not emulator.submissions and not emulator.rejections


# ---- the example reference ----------------------------------------------------------------------

def test_a_fresh_comfyui_has_the_example_and_a_users_file_of_that_name_is_kept(comfyui, bare):
    assert (comfyui.base / "input" / EXAMPLE).read_bytes() == SHIPPED_EXAMPLE.read_bytes()
    assert (bare.base / "input" / EXAMPLE).read_bytes() == users_own_picture()      # never overwritten
    listed = comfyui.get_json("/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"][0]
    assert EXAMPLE in listed                                                    # Load Image offers it


def test_every_workflow_loads_the_example_and_nothing_a_user_must_add():
    for name in WORKFLOWS:
        prompt = api_twin(name)
        assert {prompt[node]["inputs"]["image"] for node in nodes_of(prompt, "LoadImage")} == {EXAMPLE}, name


def test_the_example_is_a_small_png_the_packs_script_draws(tmp_path):
    import subprocess
    import sys

    import numpy as np

    assert SHIPPED_EXAMPLE.stat().st_size < 40_000
    made = tmp_path / "example.png"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make_example_reference.py"), str(made)], check=True)
    shipped, redrawn = (np.asarray(Image.open(path).convert("RGB"), dtype=np.int16) for path in (SHIPPED_EXAMPLE, made))
    assert shipped.shape == (512, 512, 3) and np.abs(shipped - redrawn).max() <= 8
    assert tuple(shipped[4, 4]) == (255, 255, 255)                      # a white background, as InstantCharacter wants


def quick(prompt: dict) -> dict:
    """The local generators made cheap for the tiny test models (a few steps, a small size)."""
    for node in nodes_of(prompt, "CharIDInstantCharacterLocal"):
        prompt[node]["inputs"].update(steps=2, width=64, height=64)
    for node in nodes_of(prompt, "CharIDInstantIDLocal"):
        prompt[node]["inputs"].update(steps=2, width=96, height=64)
    return prompt


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_shipped_workflow_runs_with_no_upload(comfyui, emulators, name, request):
    """As shipped (only the local generators' steps and size made small for the tiny test models):
    the cloud ones against the emulators, the local ones on the tiny models under the real names. The
    native workflows run on the native tiny files, their text encoding swapped for the test-only
    conditioning nodes (instantcharacter_models / instantid_models.native_workflow_on_tiny_files say why)."""
    prompt = quick(api_twin(name))
    if name == "native_instantcharacter":
        import instantcharacter_models as tiny

        names = tiny.link_native_files(request.getfixturevalue("native_files"), comfyui.base / "models")
        prompt = tiny.native_workflow_on_tiny_files(prompt, names)
    if name == "native_instantid":
        import instantid_models

        names = instantid_models.link_native_comfy_files(request.getfixturevalue("native_instantid_files"),
                                                         comfyui.base / "models")
        prompt = instantid_models.native_workflow_on_tiny_files(prompt, names)
    entry = comfyui.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert any("images" in output or "text" in output for output in entry["outputs"].values())


# ---- the route with no local model files ------------------------------------------------------------

def route_workflow(prefer: str, seed: int) -> tuple[dict, str]:
    """The shipped route workflow; the cloud generator's seed makes its job new (not ComfyUI's cache)."""
    prompt = api_twin("route_local_or_cloud")
    [route] = nodes_of(prompt, "CharIDRouteLocalOrCloud")
    prompt[route]["inputs"]["prefer"] = prefer
    for node in nodes_of(prompt, "CharIDSegmindInstantID"):
        prompt[node]["inputs"]["seed"] = seed
    return prompt, route


LOCAL_BRANCH = {"CharIDFaceModelsLoader", "CharIDInstantIDLoader", "CharIDInstantIDLocal"}


@pytest.mark.parametrize("prefer", ["auto", "cloud"])
def test_with_no_local_files_the_route_queues_and_runs_the_cloud(bare, emulators, prefer):
    from test_comfyui_route import run_and_watch

    use_keys(bare, "SEGMIND_API_KEY")
    prompt, route = route_workflow(prefer, seed={"auto": 101, "cloud": 102}[prefer])
    entry, executed = run_and_watch(bare, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    texts = [output["text"][0] for output in entry["outputs"].values() if "text" in output]
    if prefer == "auto":
        [why] = [text for text in texts if text.startswith("cloud: ")]
        assert why.startswith("cloud: local model files missing — node ")
        assert "sd_xl_base_1.0.safetensors" in why and str(bare.base / "models") in why
    else:
        assert "cloud: forced: prefer = cloud" in texts
    assert not {node for node in executed if prompt[node]["class_type"] in LOCAL_BRANCH}
    assert emulators["segmind"].counts["submit"] == 1
    [info] = [json.loads(text) for text in texts if text.startswith("{")]
    assert info["backend"] == "Segmind InstantID (v1)"


def test_with_no_local_files_a_forced_local_route_queues_and_fails_at_the_loader(bare, emulators):
    use_keys(bare, "SEGMIND_API_KEY")
    prompt, _ = route_workflow("local", seed=103)
    entry = bare.run(prompt)                                  # queued: nothing refused it at queue time
    assert entry["status"]["status_str"] == "error"
    [failure] = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert failure["node_type"] in {"CharIDFaceModelsLoader", "CharIDInstantIDLoader"}
    message = error_message(entry)
    assert str(bare.base / "models") in message                # the folders searched
    named = prompt[failure["node_id"]]["inputs"]
    assert any(isinstance(value, str) and value.split(" (")[0] in message for value in named.values())
    assert untouched(emulators["segmind"])                    # the cloud got no submit


# ---- compare: what is available runs, the rest is a skipped tile ------------------------------------

def compare_result(server, entry, prompt) -> tuple[Image.Image, list[str]]:
    assert entry["status"]["status_str"] == "success", entry["status"]
    [save] = nodes_of(prompt, "SaveImage")
    [image] = entry["outputs"][save]["images"]
    [report] = [output["text"][0] for output in entry["outputs"].values() if "text" in output]
    return Image.open(io.BytesIO(server.output_bytes(image))).convert("RGB"), report.splitlines()


def tile_colour(grid: Image.Image, index: int, cell: int = 512) -> tuple:
    """The top-left pixel of the index-th square of a two-row, three-column grid."""
    return grid.getpixel(((index % 3) * cell + 4, (index // 3) * (grid.height // 2) + 4))


def test_compare_with_no_key_and_no_local_file_is_a_grid_of_skipped_tiles_and_sends_nothing(bare, emulators):
    from pipelines.compare import SKIPPED_TILE

    use_keys(bare)
    prompt = api_twin("compare_backends")
    grid, report = compare_result(bare, bare.run(prompt), prompt)
    assert len(report) == 5 and all(" — skipped: node " in line for line in report)
    assert report[2].startswith("3. InstantCharacter (WaveSpeed cloud) — skipped: node ")
    assert "WAVESPEED_API_KEY" in report[2] and "FAL_KEY" in report[3] and "SEGMIND_API_KEY" in report[4]
    assert "flux1-dev.safetensors" in report[0] and "sd_xl_base_1.0.safetensors" in report[1]
    assert all(tile_colour(grid, index) == SKIPPED_TILE for index in range(5))
    assert all(untouched(emulator) for emulator in emulators.values())


def test_compare_with_one_key_runs_that_backend_and_skips_the_others(bare, emulators):
    """Queued first without the key, then again once the key is added: the grid is not ComfyUI's
    cached one, the fal node runs now."""
    from pipelines.compare import SKIPPED_TILE

    prompt = api_twin("compare_backends")
    use_keys(bare)
    compare_result(bare, bare.run(prompt), prompt)
    use_keys(bare, "FAL_KEY")
    grid, report = compare_result(bare, bare.run(api_twin("compare_backends")), prompt)
    assert report[3] == "4. fal InstantCharacter"                # ran; no face models here to score it
    assert [index for index, line in enumerate(report[:5]) if " — skipped: " in line] == [0, 1, 2, 4]
    assert report[5].startswith("identity not scored: node ") and "antelopev2" in report[5]
    assert tile_colour(grid, 3) != SKIPPED_TILE and tile_colour(grid, 2) == SKIPPED_TILE
    assert emulators["fal"].counts["submit"] == 1
    assert untouched(emulators["wavespeed"]) and untouched(emulators["segmind"])
