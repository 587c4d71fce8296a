"""Local InstantID and the face nodes inside a real ComfyUI, with the tiny models (antelopev2 nested
one folder too deep, as users unzip it) in the user's model folders: the socket layout shared with
the Segmind node, the same image as the pipeline gives in Python, identity scores, hybrid runs and
the errors users meet."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

import face_models
from comfyui_server import error_message, socket_layout

pytestmark = pytest.mark.comfyui

FACES = "CharIDFaceModelsLoader"
LOADER = "CharIDInstantIDLoader"
LOCAL = "CharIDInstantIDLocal"
SEGMIND = "CharIDSegmindInstantID"
SIMILARITY = "CharIDIdentitySimilarity"
ANALYSIS = "CharIDFaceAnalysis"


def upload(comfyui, image: Image.Image, name: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)                   # a JPEG, as most photos are
    return comfyui.upload_image(buffer.getvalue(), name)


@pytest.fixture(scope="module")
def portrait(comfyui):
    """A photo with one 'face' the tiny detector finds (a bright square on dark)."""
    return upload(comfyui, face_models.scene((120, 50, 230, 170), size=(320, 240)), "instantid_portrait.jpg")


@pytest.fixture(scope="module")
def no_face(comfyui):
    return upload(comfyui, face_models.scene(size=(320, 240)), "instantid_no_face.jpg")


def loader_node(comfyui, sdxl: str = "checkpoint", identitynet: str = "identitynet_file", lcm: bool = True,
                memory_mode: str = "resident") -> dict:
    names = comfyui.instantid_models
    return {"class_type": LOADER, "inputs": {
        "sdxl_model": names[sdxl], "identitynet": names[identitynet], "adapter": names["adapter"],
        "face_models": ["9", 0], "lcm_lora": names["lcm_lora"] if lcm else "none", "memory_mode": memory_mode,
        "dtype": "auto"}}


def local_node(seed=5, steps=2, width=96, height=64, prompt="a man in a garden", **changes) -> dict:
    inputs = {"reference": ["1", 0], "prompt": prompt, "negative_prompt": "", "width": width, "height": height,
              "seed": seed, "steps": steps, "guidance": 5.0, "num_images": 1, "strength": 0.8, "pipeline": ["10", 0],
              "style": "(No style)", "adapter_strength": 0.8, "enhance_face_region": True, "fast_mode": False,
              **changes}
    return {"class_type": LOCAL, "inputs": inputs}


def graph(comfyui, image_name: str, nodes: dict, loader: dict | None = None) -> dict:
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
              "9": {"class_type": FACES, "inputs": {"antelopev2": comfyui.instantid_models["antelopev2"],
                                                    "provider": "auto"}},
              "10": loader or loader_node(comfyui)}
    for node_id, node in nodes.items():
        prompt[node_id] = node
        prompt[f"{node_id}s"] = {"class_type": "SaveImage", "inputs": {"images": [node_id, 0],
                                                                      "filename_prefix": f"instantid/{node_id}"}}
        prompt[f"{node_id}i"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 1]}}
    return prompt


def outputs(comfyui, entry, node_id):
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [Image.open(io.BytesIO(comfyui.output_bytes(image))).convert("RGB")
              for image in entry["outputs"][f"{node_id}s"]["images"]]
    text = entry["outputs"][f"{node_id}i"]["text"][0]
    return images, (json.loads(text) if text.startswith("{") else text)


def test_the_local_node_has_the_segmind_nodes_sockets_and_option_names(comfyui):
    info = comfyui.get_json("/object_info")
    assert info[LOCAL]["category"] == info[LOADER]["category"] == "Character Identity/Local"

    def sockets(node):
        return socket_layout(info, node)

    local, segmind = sockets(LOCAL), sockets(SEGMIND)
    assert local[:10] == segmind[:10]
    assert local[10] == ("pipeline", "CHARID_INSTANTID")
    segmind_options = [name for name, _ in segmind[10:]]
    assert [name for name, _ in local[11:15]] == [n for n in segmind_options if n in
                                                  ("style", "adapter_strength", "enhance_face_region", "pose_image")]
    assert info[LOCAL]["output_name"] == info[SEGMIND]["output_name"] == ["images", "info"]
    local_styles = info[LOCAL]["input"]["required"]["style"][1]["options"]
    assert set(local_styles) <= set(info[SEGMIND]["input"]["required"]["style"][1]["options"])

    names = comfyui.instantid_models
    loader = info[LOADER]["input"]["required"]
    assert {names["checkpoint"], names["sdxl_folder"]} <= set(loader["sdxl_model"][1]["options"])
    assert {names["identitynet_folder"], names["identitynet_file"]} <= set(loader["identitynet"][1]["options"])
    assert names["adapter"] in loader["adapter"][1]["options"]
    assert names["lcm_lora"] in loader["lcm_lora"][1]["options"]
    # antelopev2/antelopev2 (unzipped one level too deep) is listed as the folder users think it is
    assert info[FACES]["input"]["required"]["antelopev2"][1]["options"] == ["models/antelopev2"]
    assert info[FACES]["output"] == ["CHARID_FACE_MODELS"]


@pytest.mark.parametrize("sdxl, identitynet", [("checkpoint", "identitynet_file"),
                                               ("sdxl_folder", "identitynet_folder")])
def test_comfyui_gives_the_image_the_pipeline_gives_in_python(comfyui, portrait, sdxl, identitynet):
    import instantid_models as tiny
    from instantcharacter_models import comfy_tokenizer_dirs
    from pipelines.local.instantid.loading import InstantIDFiles, build_pipeline

    node = local_node(seed=77, style="Watercolor", negative_prompt="(blurry:1.3)")
    entry = comfyui.run(graph(comfyui, portrait, {"2": node}, loader_node(comfyui, sdxl, identitynet)))
    [image], info = outputs(comfyui, entry, "2")
    assert image.size == (96, 64)
    assert info["backend"] == "InstantID (local)" and info["seed"] == 77 and info["style"] == "Watercolor"
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["enhance_face_region"] is True

    models = comfyui.base / "models"
    names = comfyui.instantid_models
    sources = {"checkpoint": models / "checkpoints" / names["checkpoint"],
               "sdxl_folder": models / "diffusers" / "sdxl-tiny",
               "identitynet_file": models / "controlnet" / names["identitynet_file"],
               "identitynet_folder": models / "controlnet" / "InstantID" / "ControlNetModel"}
    pipe = build_pipeline(InstantIDFiles(sources[sdxl], sources[identitynet], models / "instantid" / names["adapter"],
                                         comfy_tokenizer_dirs()[0],
                                         antelopev2=models / "insightface" / "models" / "antelopev2"))
    loaded = Image.open(io.BytesIO(comfyui.loaded_image_png(portrait))).convert("RGB")     # what LoadImage gave
    face = pipe.face_from_images(loaded)
    from pipelines.local.instantid.styles import apply_style

    prompt, negative = apply_style("Watercolor", "a man in a garden", "(blurry:1.3)")
    [expected] = pipe.generate(face, prompt, negative, width=96, height=64, seed=77, steps=2)
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    assert tiny.UNET                                                         # the tiny models, not real ones


def test_width_and_height_zero_take_the_demo_size_of_the_pose_photo(comfyui, portrait):
    pose = upload(comfyui, face_models.scene((20, 20, 60, 60), size=(120, 160)), "instantid_pose.jpg")
    prompt = graph(comfyui, portrait, {"2": local_node(seed=3, steps=1, width=0, height=0, pose_image=["3", 0],
                                                       guidance=1.0)})
    prompt["3"] = {"class_type": "LoadImage", "inputs": {"image": pose}}
    [image], info = outputs(comfyui, comfyui.run(prompt), "2")
    assert image.size == (960, 1280) and info["pose_image"] is True and info["size"] == [960, 1280]


def test_swapping_the_segmind_node_for_the_local_one_keeps_every_shared_input(comfyui, emulator_servers, portrait):
    """The Segmind node's inputs, style included, minus its API choices, plus the pipeline wire."""
    from test_comfyui_cloud import cloud_node

    segmind = cloud_node(SEGMIND, seed=9, style="Watercolor", width=96, height=64)
    shared = {name: value for name, value in segmind["inputs"].items()
              if name not in ("api_version", "custom_style")}
    node = {"class_type": LOCAL, "inputs": {**shared, "pipeline": ["10", 0], "fast_mode": False, "steps": 2}}
    [image], info = outputs(comfyui, comfyui.run(graph(comfyui, portrait, {"2": node})), "2")
    assert image.size == (96, 64) and info["style"] == "Watercolor" and info["backend"] == "InstantID (local)"


def test_fast_mode_runs_with_the_lcm_lora_and_is_refused_without_it(comfyui, portrait):
    fast = local_node(seed=4, steps=2, guidance=1.5, fast_mode=True)
    [image], info = outputs(comfyui, comfyui.run(graph(comfyui, portrait, {"2": fast})), "2")
    assert info["fast_mode"] is True and np.asarray(image).std() > 1
    entry = comfyui.run(graph(comfyui, portrait, {"2": fast}, loader_node(comfyui, lcm=False)))
    assert "fast_mode needs the LCM-LoRA for SDXL; choose it in the loader" in error_message(entry)


def test_a_photo_without_a_face_is_a_clear_error(comfyui, no_face):
    entry = comfyui.run(graph(comfyui, no_face, {"2": local_node()}))
    assert "no face found in the reference image (320x240)" in error_message(entry)


def test_a_checkpoint_that_is_not_sdxl_is_refused_at_queue_time(comfyui, portrait):
    import torch
    from safetensors.torch import save_file

    path = comfyui.base / "models" / "checkpoints" / "sd15-tiny.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1)}, str(path))
    try:
        loader = loader_node(comfyui)
        loader["inputs"]["sdxl_model"] = "sd15-tiny.safetensors"
        status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, portrait, {"2": local_node()}, loader)})
    finally:
        path.unlink()
    assert status == 400
    [error] = body["node_errors"]["10"]["errors"]             # once, not once per input the loader checks
    assert error["details"] == ("sdxl_model: sd15-tiny.safetensors is a Stable Diffusion 1.x model; InstantID needs "
                                "an SDXL checkpoint (SDXL base 1.0 or a fine-tune of it)")


def test_missing_files_queue_and_the_loader_that_runs_names_them(comfyui, portrait):
    loader = loader_node(comfyui, memory_mode="model_offload")
    loader["inputs"].update(sdxl_model="sd_xl_base_missing.safetensors", adapter="(none found)")
    status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, portrait, {"2": local_node()}, loader)})
    assert status == 200, body
    message = error_message(comfyui.wait(body["prompt_id"]))
    models = comfyui.base / "models"
    assert f"sdxl_model: 'sd_xl_base_missing.safetensors' is not in {models / 'checkpoints'}" in message
    assert f"adapter: no file found in {models / 'instantid'}" in message and "InstantX/InstantID" in message
    prompt = graph(comfyui, portrait, {"2": local_node()})
    prompt["9"]["inputs"]["antelopev2"] = "(none found)"
    status, body = comfyui.post_json("/prompt", {"prompt": prompt})
    assert status == 200, body
    message = error_message(comfyui.wait(body["prompt_id"]))
    assert f"antelopev2: no folder found in {models / 'insightface'}" in message and "antelopev2" in message


def test_identity_similarity_scores_any_images_and_no_face_is_none(comfyui, portrait, no_face):
    prompt = graph(comfyui, portrait, {"2": local_node(seed=8, steps=1)})
    prompt["3"] = {"class_type": "LoadImage", "inputs": {"image": no_face}}
    prompt["4"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["3", 0]}}
    prompt["5"] = {"class_type": SIMILARITY, "inputs": {"face_models": ["9", 0], "reference": ["1", 0],
                                                        "images": ["4", 0]}}
    prompt["5s"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 2], "filename_prefix": "identity/5"}}
    prompt["5i"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}
    prompt["5f"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}}
    prompt["6"] = {"class_type": ANALYSIS, "inputs": {"face_models": ["9", 0], "image": ["1", 0]}}
    prompt["6k"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "identity/kps"}}
    prompt["6a"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": "identity/aligned"}}
    entry = comfyui.run(prompt)
    annotated, report = outputs(comfyui, entry, "5")
    assert report.splitlines()[:2] == ["image 1: 1.000", "image 2: none (no face found)"]
    assert len(annotated) == 2 and annotated[0].size == (320, 240)
    loaded = Image.open(io.BytesIO(comfyui.loaded_image_png(portrait))).convert("RGB")     # what LoadImage gave
    assert not np.array_equal(np.asarray(annotated[0]), np.asarray(loaded))      # the score is written on
    scores = [text for text in entry["outputs"]["5f"]["text"]]
    assert len(scores) == 2 and float(scores[0]) == pytest.approx(1.0, abs=1e-6)
    [keypoints] = [Image.open(io.BytesIO(comfyui.output_bytes(i))) for i in entry["outputs"]["6k"]["images"]]
    [aligned] = [Image.open(io.BytesIO(comfyui.output_bytes(i))) for i in entry["outputs"]["6a"]["images"]]
    assert keypoints.size == (320, 240) and aligned.size == (112, 112)


def test_a_local_instantid_and_a_cloud_node_run_at_the_same_time(comfyui, emulator_servers, portrait):
    from test_comfyui_cloud import cloud_node

    segmind = emulator_servers["segmind"]
    segmind.reset()
    segmind.processing_s = 3.0
    try:
        nodes = {"2": local_node(seed=31, steps=25, prompt="hybrid local"),
                 "3": cloud_node(SEGMIND, seed=32, api_version="v2")}
        started = time.monotonic()
        entry = comfyui.run(graph(comfyui, portrait, nodes))
        wall = time.monotonic() - started
    finally:
        segmind.reset()
    _, local_info = outputs(comfyui, entry, "2")
    _, cloud_info = outputs(comfyui, entry, "3")
    local_seconds = local_info["timings"]["total"]
    assert cloud_info["timings"]["total"] >= 3.0 and local_seconds > 0.5
    assert wall < local_seconds + cloud_info["timings"]["total"] - 0.3


def test_comfyui_manages_a_resident_instantid_and_unload_models_frees_it(comfyui, portrait):
    """As for InstantCharacter: ComfyUI holds each phase of the resident pipeline (text encoders, face
    resampler, UNet + IdentityNet, VAE) as one of its loaded models, "Unload models" takes them off,
    the next run places what it needs again and gives the image it gave before."""
    request = "Requested to load InstantIDWeights"
    loader = loader_node(comfyui)
    loader["inputs"]["dtype"] = "fp32"                 # = auto on the CPU, but a loader of its own
    before = comfyui.log_text().count(request)
    first = comfyui.run(graph(comfyui, portrait, {"2": local_node(seed=21)}, loader))
    assert comfyui.log_text().count(request) == before + 4
    second = graph(comfyui, portrait, {"2": local_node(seed=22)}, loader)
    comfyui.run(second)
    assert comfyui.log_text().count(request) == before + 4          # still loaded: none placed again
    assert "model management did not take" not in comfyui.log_text()    # managed, not the fallback

    comfyui.unload_models(last_prompt=second)
    again = comfyui.run(graph(comfyui, portrait, {"2": local_node(seed=21, prompt="a man in a garden ")}, loader))
    # unloaded; a new prompt text (the face's tokens cached) needs the text encoders, UNet and VAE back
    assert comfyui.log_text().count(request) == before + 7
    # the prompt differs by a trailing space only (so ComfyUI's cache runs the node again): same tokens
    assert np.array_equal(np.asarray(outputs(comfyui, again, "2")[0][0]), np.asarray(outputs(comfyui, first, "2")[0][0]))
