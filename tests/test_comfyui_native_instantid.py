"""Native InstantID through a real ComfyUI over HTTP, on SDXL-layout files ComfyUI's own loaders take
(tests/instantid_models.py build_native_comfy_files): CheckpointLoaderSimple (an all-in-one SDXL
checkpoint: the Segmind-Vega-like tiny UNet and a real-size random VAE, fp16), LoraLoader (a kohya LoRA
on that UNet), ControlNetLoader (the IdentityNet in ComfyUI's original ControlNet layout), Load Face
Models + InstantID Face (the tiny antelopev2 on a photo with one face it detects), Load InstantID
Adapter (native), Apply InstantID (native) and ComfyUI's KSampler (CFG 5) → VAEDecode → SaveImage.

The conditioning comes from a test-only node (tests/comfyui_test_nodes, TestSDXLConditioning) that only
the test ComfyUIs load: CheckpointLoaderSimple builds SDXL's CLIP-L and CLIP-G at full size from fixed
configs (0.8 B parameters), so the checkpoint holds no text encoders and ComfyUI gives no CLIP."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from comfyui_server import error_message

pytestmark = pytest.mark.comfyui

SIZE = 64                           # pixels: an 8×8 latent (the UNet's three levels at 8, 4, 2)
STEPS = 2
SAVE = "14"
SAMPLER = "12"


@pytest.fixture(scope="module")
def native_server(tmp_path_factory, emulator_servers, native_instantid_files):
    """A real ComfyUI with the native InstantID files and the tiny antelopev2 in its model folders, a
    reference photo with one face uploaded, and the test-only conditioning node."""
    import face_models
    import instantid_models as tiny
    from conftest import link_test_nodes, start_comfyui

    base = tmp_path_factory.mktemp("comfyui-native-instantid")
    models = base / "models"
    names = tiny.link_native_comfy_files(native_instantid_files, models)
    face_models.antelopev2(models / "insightface" / "models" / "antelopev2")
    link_test_nodes(base)
    server = start_comfyui(base, emulator_servers, [])
    buffer = io.BytesIO()
    face_models.scene((120, 50, 230, 170), size=(320, 240)).save(buffer, "PNG")
    server.reference = server.upload_image(buffer.getvalue(), "native_instantid_face.png")
    info = server.get_json("/object_info/CharIDFaceModelsLoader")["CharIDFaceModelsLoader"]
    server.names = {**names, "antelopev2": info["input"]["required"]["antelopev2"][1]["options"][0]}
    try:
        yield server
    finally:
        server.stop()
        server.keep_log("comfyui-native-instantid-server.log")


def native_graph(server, identity: float = 0.8, adapter: float = 0.8, apply: bool = True, seed: int = 3,
                 steps: int = STEPS, size: int = SIZE, model: dict | None = None) -> dict:
    """The user's SDXL graph with InstantID applied (apply=False: the same graph without the InstantID
    nodes). model: another MODEL loader for Apply instead of checkpoint + LoRA."""
    names = server.names
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": names["checkpoint"]}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": names["lora"],
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "8": {"class_type": "TestSDXLConditioning", "inputs": {"seed": 1}},
        "9": {"class_type": "TestSDXLConditioning", "inputs": {"seed": 2}},
        "11": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER, 0], "vae": ["1", 2]}},
        SAVE: {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "native/instantid"}},
    }
    source, positive, negative = ["2", 0], ["8", 0], ["9", 0]
    if model is not None:
        prompt["15"] = model
        source = ["15", 0]
    if apply:
        prompt.update({
            "3": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": names["controlnet"]}},
            "4": {"class_type": "CharIDFaceModelsLoader", "inputs": {"antelopev2": names["antelopev2"], "provider": "auto"}},
            "5": {"class_type": "LoadImage", "inputs": {"image": server.reference}},
            "6": {"class_type": "CharIDInstantIDFace", "inputs": {"face_models": ["4", 0], "reference": ["5", 0]}},
            "7": {"class_type": "CharIDLoadInstantIDAdapter", "inputs": {"adapter": names["adapter"], "dtype": "auto"}},
            "10": {"class_type": "CharIDApplyInstantID",
                   "inputs": {"model": source, "positive": positive, "negative": negative, "adapter": ["7", 0],
                              "face": ["6", 0], "control_net": ["3", 0], "identity_strength": identity,
                              "adapter_strength": adapter, "start_percent": 0.0, "end_percent": 1.0,
                              "enhance_face_region": True}}})
        source, positive, negative = ["10", 0], ["10", 1], ["10", 2]
    prompt[SAMPLER] = {"class_type": "KSampler",
                       "inputs": {"model": source, "positive": positive, "negative": negative, "latent_image": ["11", 0],
                                  "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
                                  "scheduler": "normal", "denoise": 1.0}}
    return prompt


def image_of(server, entry) -> np.ndarray:
    assert entry["status"]["status_str"] == "success", entry["status"]
    [image] = entry["outputs"][SAVE]["images"]
    return np.asarray(Image.open(io.BytesIO(server.output_bytes(image))).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def images(native_server):
    """The graph with the face, without the InstantID nodes, and with both strengths 0 (each run once)."""
    runs = {"face": native_graph(native_server), "plain": native_graph(native_server, apply=False),
            "strengths_zero": native_graph(native_server, identity=0.0, adapter=0.0)}
    return {name: (image_of(native_server, native_server.run(prompt, timeout=600)), prompt)
            for name, prompt in runs.items()}


def test_the_face_changes_the_image_and_strengths_zero_are_the_plain_graph(images):
    face, plain, strengths_zero = (images[name][0] for name in ("face", "plain", "strengths_zero"))
    assert face.shape == (SIZE, SIZE, 3)
    difference = np.abs(face - plain)
    print(f"\n|face - plain| max {difference.max()}, mean {difference.mean():.2f} (8-bit levels)")
    assert difference.max() > 10
    assert np.array_equal(strengths_zero, plain)


def test_unload_models_then_the_same_prompt_gives_the_same_image(native_server, images):
    """"Unload models" takes the SDXL MODEL, the IdentityNet and the adapter off; the next run loads them
    again (ComfyUI logs each load) and gives the image it gave before, bit for bit."""
    face, prompt = images["face"]
    other_seed = native_graph(native_server, seed=4)
    image_of(native_server, native_server.run(other_seed, timeout=600))
    native_server.unload_models(last_prompt=other_seed)
    loads_before = native_server.log_text().count("Requested to load SDXL")
    adapter_loads_before = native_server.log_text().count("InstantIDAdapterWeights")
    again = native_server.run(prompt, timeout=600)                  # seed 3 again: KSampler runs anew
    log = native_server.log_text()
    assert log.count("Requested to load SDXL") > loads_before       # loaded again after the unload
    assert log.count("InstantIDAdapterWeights") > adapter_loads_before
    assert np.array_equal(image_of(native_server, again), face)


def test_progress_per_step_and_cancel_within_a_step(native_server):
    steps = 40
    prompt = native_graph(native_server, seed=11, steps=steps)

    kind, progress, seconds = native_server.cancel_at_progress(prompt, SAMPLER)
    print(f"\nprogress {progress}; ended {seconds:.2f} s after Cancel")
    assert kind == "execution_interrupted"
    assert progress[:2] == [1, 2] and max(progress) <= 4 and all(value <= steps for value in progress)
    assert seconds < 20


def test_a_model_that_is_not_sdxl_is_refused_by_name(native_server):
    prompt = native_graph(native_server, model={"class_type": "UNETLoader", "inputs": {
        "unet_name": native_server.names["sd15_unet"], "weight_dtype": "default"}})
    entry = native_server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "error"
    failed = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert failed[0]["node_type"] == "CharIDApplyInstantID"
    assert "Apply InstantID needs an SDXL model; this MODEL is BaseModel (SD15)" in error_message(entry)
