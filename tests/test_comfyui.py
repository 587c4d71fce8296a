"""The pack inside a real ComfyUI server, driven over HTTP exactly as the frontend or a script would."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from comfyui_server import PACK_MODULE, PACK_NAME, error_message

pytestmark = pytest.mark.comfyui

# Every node the pack registers; a node missing here or in ComfyUI fails the first test.
PACK_NODES = {
    "CharIDPrepareReference": "Character Identity/Reference",
    "CharIDWaveSpeedInstantCharacter": "Character Identity/Cloud",
    "CharIDFalInstantCharacter": "Character Identity/Cloud",
    "CharIDSegmindInstantID": "Character Identity/Cloud",
    "CharIDInstantCharacterLoader": "Character Identity/Local",
    "CharIDInstantCharacterLocal": "Character Identity/Local",
    "CharIDLoadInstantCharacterAdapter": "Character Identity/Local",
    "CharIDLoadInstantCharacterEncoders": "Character Identity/Local",
    "CharIDApplyInstantCharacter": "Character Identity/Local",
    "CharIDInstantIDLoader": "Character Identity/Local",
    "CharIDInstantIDLocal": "Character Identity/Local",
    "CharIDLoadInstantIDAdapter": "Character Identity/Local",
    "CharIDInstantIDFace": "Character Identity/Local",
    "CharIDApplyInstantID": "Character Identity/Local",
    "CharIDFaceModelsLoader": "Character Identity/Faces",
    "CharIDFaceAnalysis": "Character Identity/Faces",
    "CharIDIdentitySimilarity": "Character Identity/Faces",
    "CharIDInstantIDFacePrecomputed": "Character Identity/Local",
    "CharIDRouteLocalOrCloud": "Character Identity",
    "CharIDCompareResults": "Character Identity",
}
GREEN, RED = (0, 255, 0), (255, 0, 0)


def reference_png(width=64, height=32) -> bytes:
    """Left half opaque red, right half fully transparent."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def saved_images(server, entry, node_id="3") -> list[Image.Image]:
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"][node_id]["images"]
    return [Image.open(io.BytesIO(server.output_bytes(image))).convert("RGB") for image in images]


def prepare_prompt(image_name: str, **inputs) -> dict:
    prepare = {"image": ["1", 0], "background": "#00FF00", "fit": "pad", "size": 0, "mask": ["1", 1]}
    prepare.update(inputs)
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "CharIDPrepareReference", "inputs": prepare},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "charid/test"}},
    }


def test_object_info_lists_every_pack_node_in_its_category(comfyui):
    info = comfyui.get_json("/object_info")
    ours = {name: node for name, node in info.items() if node["python_module"] == PACK_MODULE}
    assert {name: node["category"] for name, node in ours.items()} == PACK_NODES
    for name, node in ours.items():
        assert name.startswith("CharID") and node["display_name"] and node["description"]


def test_the_pack_imports_without_failure(comfyui):
    log = comfyui.log_text()
    line = re.search(r"^\s*([\d.]+) seconds(.*): .*" + re.escape(PACK_NAME) + r"\s*$", log, re.M)
    assert line, "ComfyUI did not list the pack under 'Import times for custom nodes'"
    assert "IMPORT FAILED" not in line.group(2)
    assert not re.search(r"Cannot import .*" + re.escape(PACK_NAME), log)
    start_up = log.split("To see the GUI go to", 1)[0]       # later tracebacks are prompts failing on purpose
    assert "Traceback" not in start_up, start_up[-3000:]


def test_the_web_extension_is_served(comfyui):
    script = f"/extensions/{PACK_NAME}/character_identity.js"
    assert script in comfyui.get_json("/extensions")
    with comfyui.request(script) as response:
        assert response.status == 200
        assert "javascript" in response.headers["Content-Type"]
        assert b"CharacterIdentity.ui" in response.read()


def test_prepare_pads_to_a_square_and_fills_transparency_with_the_background(comfyui):
    name = comfyui.upload_image(reference_png(), "charid_pad.png")
    [image] = saved_images(comfyui, comfyui.run(prepare_prompt(name)))
    assert image.size == (64, 64)
    assert image.getpixel((32, 4)) == GREEN and image.getpixel((32, 60)) == GREEN   # padding
    assert image.getpixel((10, 32)) == RED                                           # the character
    assert image.getpixel((50, 32)) == GREEN                                         # was transparent


def test_prepare_center_crops_and_resizes(comfyui):
    name = comfyui.upload_image(reference_png(), "charid_crop.png")
    [image] = saved_images(comfyui, comfyui.run(prepare_prompt(name, fit="center_crop", size=16)))
    assert image.size == (16, 16)
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[8, 3] - RED).max() <= 2 and np.abs(pixels[8, 12] - GREEN).max() <= 2


def test_prepare_handles_a_batch(comfyui):
    name = comfyui.upload_image(reference_png(), "charid_batch.png")
    prompt = prepare_prompt(name, size=24)
    prompt["4"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}}
    prompt["2"]["inputs"]["image"] = ["4", 0]
    images = saved_images(comfyui, comfyui.run(prompt))
    assert len(images) == 3 and all(image.size == (24, 24) for image in images)
    assert all(np.array_equal(np.asarray(image), np.asarray(images[0])) for image in images)


def test_a_bad_background_colour_is_refused_before_anything_runs(comfyui):
    name = comfyui.upload_image(reference_png(), "charid_bad.png")
    status, body = comfyui.post_json("/prompt", {"prompt": prepare_prompt(name, background="greenish")})
    assert status == 400
    errors = body["node_errors"]["2"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "'greenish' is not a colour; use #RRGGBB" in errors[0]["details"]


def test_a_mask_of_another_size_fails_with_a_clear_message(comfyui):
    name = comfyui.upload_image(reference_png(), "charid_main.png")
    other = comfyui.upload_image(reference_png(16, 16), "charid_other.png")
    prompt = prepare_prompt(name, mask=["5", 1])
    prompt["5"] = {"class_type": "LoadImage", "inputs": {"image": other}}
    entry = comfyui.run(prompt)
    assert entry["status"]["status_str"] == "error"
    assert "mask is 16x16 but the image is 64x32" in error_message(entry)


GENERATORS = ["CharIDWaveSpeedInstantCharacter", "CharIDFalInstantCharacter", "CharIDSegmindInstantID"]
COMMON = ["reference", "prompt", "negative_prompt", "width", "height", "seed", "steps", "guidance", "num_images",
          "strength"]


def test_generator_nodes_share_one_socket_layout(comfyui):
    info = comfyui.get_json("/object_info")
    shapes = set()
    for name in GENERATORS:
        node = info[name]
        assert node["input_order"]["required"][:len(COMMON)] == COMMON
        assert node["output"] == ["IMAGE", "STRING"] and node["output_name"] == ["images", "info"]
        shapes.add(tuple(node["input"]["required"][socket][0] for socket in COMMON))
        assert node["input"]["required"]["seed"][1]["control_after_generate"] is True
        assert not any(word in socket.lower() for socket in node["input_order"]["required"]
                       for word in ("key", "token", "secret"))
    assert shapes == {("IMAGE", "STRING", "STRING", "INT", "INT", "INT", "INT", "FLOAT", "INT", "FLOAT")}


CLOUD_PRICE_WIDGETS = {"CharIDFalInstantCharacter": ["width", "height", "num_images", "image_size"],
                       "CharIDSegmindInstantID": [], "CharIDWaveSpeedInstantCharacter": []}


def test_cloud_nodes_declare_a_native_price_badge_where_comfyuis_api_has_them(comfyui):
    """ComfyUI 0.9.1 and newer (io.PriceBadge) draw a price from the node's definition, for API nodes
    only: there the cloud nodes declare both; on an older ComfyUI neither (the extension draws the
    price). The texts the expressions give are checked in the browser, by the frontend itself."""
    from comfyui_server import comfyui_dir

    has_price_badges = "class PriceBadge" in (comfyui_dir() / "ComfyUI/comfy_api/latest/_io.py").read_text()
    info = comfyui.get_json("/object_info")
    for name in PACK_NODES:
        badge = info[name].get("price_badge")
        if has_price_badges and name in CLOUD_PRICE_WIDGETS:
            assert info[name]["api_node"] is True
            assert badge["engine"] == "jsonata" and '"type": "text"' in badge["expr"]
            assert [widget["name"] for widget in badge["depends_on"]["widgets"]] == CLOUD_PRICE_WIDGETS[name]
        else:
            assert not info[name].get("api_node") and not badge, name
