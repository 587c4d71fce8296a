"""Local InstantCharacter inside a real ComfyUI, with the tiny models in the user's model folders:
the loader and generator nodes, the socket layout shared with the cloud nodes, the same image as
the pipeline gives in Python, hybrid local + cloud prompts, progress, previews and Cancel."""
from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from cloud_helpers import REFERENCE_RGB
from comfyui_server import error_message, socket_layout

pytestmark = pytest.mark.comfyui

LOADER = "CharIDInstantCharacterLoader"
LOCAL = "CharIDInstantCharacterLocal"


@pytest.fixture(scope="module")
def reference_name(comfyui):
    import instantcharacter_fidelity as cases

    buffer = io.BytesIO()
    cases.reference_image().save(buffer, "JPEG", quality=95)            # a JPEG, as most references are
    return comfyui.upload_image(buffer.getvalue(), "local_reference.jpg")


FROM_MODEL = "(from flux_model)"


def loader_node(comfyui, source: str = "files", memory_mode: str = "resident") -> dict:
    names = comfyui.local_models
    if source == "files":
        flux = dict(flux_model=names["flux_file"], vae=names["vae"], clip_l=names["clip_l"], t5xxl=names["t5xxl"])
    else:            # "folder" or "checkpoint": every part from the one source
        flux = dict(flux_model=names[f"flux_{source}"], vae=FROM_MODEL, clip_l=FROM_MODEL, t5xxl=FROM_MODEL)
    return {"class_type": LOADER, "inputs": {**flux, "siglip": names["siglip"], "dinov2": names["dinov2"],
                                             "adapter": names["adapter"], "weight_format": "dtype",
                                             "memory_mode": memory_mode, "dtype": "auto"}}


def local_node(seed=5, steps=3, width=80, height=64, prompt="a knight in a misty forest", **changes) -> dict:
    inputs = {"reference": ["1", 0], "prompt": prompt, "negative_prompt": "", "width": width, "height": height,
              "seed": seed, "steps": steps, "guidance": 3.5, "num_images": 1, "strength": 0.9, "pipeline": ["10", 0],
              "true_cfg_scale": 1.0, "lora": "none", "lora_strength": 1.0, "lora_trigger": "", **changes}
    return {"class_type": LOCAL, "inputs": inputs}


def graph(comfyui, reference_name, nodes: dict, loader: dict | None = None) -> dict:
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": reference_name}},
              "10": loader or loader_node(comfyui)}
    for node_id, node in nodes.items():
        prompt[node_id] = node
        prompt[f"{node_id}s"] = {"class_type": "SaveImage", "inputs": {"images": [node_id, 0],
                                                                      "filename_prefix": f"local/{node_id}"}}
        prompt[f"{node_id}i"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 1]}}
    return prompt


def outputs(comfyui, entry, node_id):
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [Image.open(io.BytesIO(comfyui.output_bytes(image))).convert("RGB")
              for image in entry["outputs"][f"{node_id}s"]["images"]]
    return images, json.loads(entry["outputs"][f"{node_id}i"]["text"][0])


def test_the_local_generator_shares_the_cloud_nodes_first_ten_sockets(comfyui):
    info = comfyui.get_json("/object_info")
    assert info[LOCAL]["category"] == info[LOADER]["category"] == "Character Identity/Local"

    def sockets(node):
        return socket_layout(info, node)

    local = sockets(LOCAL)
    for cloud in ("CharIDFalInstantCharacter", "CharIDWaveSpeedInstantCharacter"):
        assert local[:10] == sockets(cloud)[:10]
    assert local[10] == ("pipeline", "CHARID_INSTANTCHARACTER")
    assert info[LOCAL]["output_name"] == info["CharIDFalInstantCharacter"]["output_name"] == ["images", "info"]
    loader_inputs = info[LOADER]["input"]["required"]

    def options(name):
        return loader_inputs[name][1]["options"]

    assert comfyui.local_models["siglip"] in options("siglip")          # nested HF folders are found
    assert comfyui.local_models["adapter"] in options("adapter")
    assert comfyui.local_models["flux_folder"] in options("flux_model")


@pytest.mark.parametrize("source", ["files", "folder"])
def test_comfyui_gives_the_image_the_pipeline_gives_in_python(comfyui, reference_name, source, tmp_path):
    """Through LoadImage (a JPEG), the loader and the generator: the saved PNG is the pipeline's own
    output for the same files, reference and seed (rounded to 8 bits)."""
    import instantcharacter_models as tiny
    from pipelines.local.instantcharacter.loading import FluxFiles, InstantCharacterFiles, build_pipeline

    entry = comfyui.run(graph(comfyui, reference_name, {"2": local_node(seed=77)}, loader_node(comfyui, source)))
    [image], info = outputs(comfyui, entry, "2")
    assert image.size == (80, 64)
    assert info["backend"] == "InstantCharacter (local)" and info["seed"] == 77
    assert info["device"] == "cpu" and info["dtype"] == "float32"

    models = comfyui.base / "models"
    flux = (FluxFiles(folder=models / "diffusers" / "FLUX.1-dev-tiny") if source == "folder" else
            FluxFiles(transformer=models / "diffusion_models" / "flux1-dev-tiny.safetensors",
                      vae=models / "vae" / "ae-tiny.safetensors",
                      clip_l=models / "text_encoders" / "clip_l-tiny.safetensors",
                      t5xxl=models / "text_encoders" / "t5xxl-tiny.safetensors"))
    clip_tokenizer, t5_tokenizer = tiny.comfy_tokenizer_dirs()
    pipe = build_pipeline(InstantCharacterFiles(flux, models / "clip_vision" / "google" / "siglip-tiny",
                                                models / "clip_vision" / "facebook" / "dinov2-tiny",
                                                models / "instantcharacter" / "instantcharacter-tiny.bin",
                                                clip_tokenizer, t5_tokenizer))
    loaded = Image.open(io.BytesIO(comfyui.loaded_image_png(reference_name))).convert("RGB")     # what LoadImage gave
    [expected] = pipe.generate(loaded, "a knight in a misty forest", width=80, height=64, seed=77, steps=3,
                               subject_scale=0.9)
    difference = np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int))
    assert difference.max() <= 1


@pytest.mark.parametrize(("flux", "weight_format", "memory_mode"), [
    ("flux_gguf", "dtype", "group_offload"), ("flux_file", "fp8_e4m3fn", "sequential_offload")])
def test_gguf_and_fp8_storage_with_offloading_run(comfyui, reference_name, flux, weight_format, memory_mode):
    loader = loader_node(comfyui, memory_mode=memory_mode)
    loader["inputs"].update(flux_model=comfyui.local_models[flux], weight_format=weight_format)
    assert comfyui.local_models["flux_gguf"] in comfyui.get_json("/object_info")[LOADER]["input"]["required"][
        "flux_model"][1]["options"]
    entry = comfyui.run(graph(comfyui, reference_name, {"2": local_node(seed=3)}, loader))
    [image], info = outputs(comfyui, entry, "2")
    assert image.size == (80, 64) and info["memory_mode"] == memory_mode
    assert np.asarray(image).std() > 1                    # an image, not a blank


def test_a_style_lora_and_its_trigger_apply_to_one_run_only(comfyui, reference_name):
    plain = local_node(seed=12, prompt="a castle")
    styled = local_node(seed=12, prompt="a castle", lora=comfyui.local_models["lora"], lora_strength=0.8,
                        lora_trigger="tiny style")

    def run(node):
        entry = comfyui.run(graph(comfyui, reference_name, {"2": node}))
        cached = [data["nodes"] for kind, data in entry["status"]["messages"] if kind == "execution_cached"]
        assert "2" not in (cached[0] if cached else []), "the generator did not run"
        return outputs(comfyui, entry, "2")

    [before], _ = run(plain)
    [with_lora], info = run(styled)
    [after], _ = run(plain)
    assert info["lora"] == "style-tiny.safetensors" and info["lora_strength"] == 0.8
    assert info["lora_trigger"] == "tiny style"
    assert np.abs(np.asarray(with_lora, dtype=int) - np.asarray(before, dtype=int)).max() > 2
    assert np.array_equal(np.asarray(after), np.asarray(before))          # nothing stayed merged


def test_swapping_a_cloud_node_for_the_local_one_needs_one_extra_wire(comfyui, emulator_servers, reference_name):
    """The fal node's inputs, untouched, plus the pipeline wire: the local node runs them."""
    from test_comfyui_cloud import cloud_node

    fal = cloud_node("CharIDFalInstantCharacter", seed=9)
    local_inputs = {name: value for name, value in fal["inputs"].items()
                    if name in ("reference", "prompt", "negative_prompt", "width", "height", "seed", "steps",
                                "guidance", "num_images", "strength")}
    local_inputs.update(pipeline=["10", 0], true_cfg_scale=1.0, steps=2, lora="none", lora_strength=1.0,
                        lora_trigger="")
    local_inputs["width"], local_inputs["height"] = 64, 64
    entry = comfyui.run(graph(comfyui, reference_name, {"2": {"class_type": LOCAL, "inputs": local_inputs}}))
    [image], info = outputs(comfyui, entry, "2")
    assert image.size == (64, 64) and info["backend"] == "InstantCharacter (local)"


def test_a_local_and_a_cloud_node_run_at_the_same_time(comfyui, emulator_servers, reference_name):
    from test_comfyui_cloud import cloud_node

    fal = emulator_servers["fal"]
    fal.reset()
    fal.processing_s = 3.0
    nodes = {"2": local_node(seed=31, steps=20, prompt="hybrid local"), "3": cloud_node("CharIDFalInstantCharacter",
                                                                                         seed=32)}
    prompt = graph(comfyui, reference_name, nodes)
    started = time.monotonic()
    entry = comfyui.run(prompt)
    wall = time.monotonic() - started
    local_images, local_info = outputs(comfyui, entry, "2")
    _, fal_info = outputs(comfyui, entry, "3")
    [job] = fal.jobs.values()
    # the fal job was submitted while the local node was still generating, and polled meanwhile
    local_seconds = local_info["timings"]["total"]
    assert fal_info["timings"]["total"] >= 3.0 and local_seconds > 0.5
    assert wall < local_seconds + fal_info["timings"]["total"] - 0.3


def test_progress_and_previews_reach_the_browser_and_cancel_stops_within_a_step(comfyui, reference_name):
    import aiohttp

    async def watch():
        progress, previews = [], 0
        client_id = "local-watch"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfyui.url}/ws?clientId={client_id}") as ws:
                status, body = await asyncio.to_thread(comfyui.post_json, "/prompt", {
                    "prompt": graph(comfyui, reference_name, {"2": local_node(seed=41, steps=60, prompt="long run")}),
                    "client_id": client_id})
                assert status == 200, body
                interrupted_at = None
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        previews += message.data[:4] in (b"\x00\x00\x00\x01", b"\x00\x00\x00\x04")
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(message.data)
                        if data["type"] == "progress" and data["data"].get("node") == "2":
                            progress.append(data["data"]["value"])
                            if data["data"]["value"] == 3 and interrupted_at is None:
                                interrupted_at = data["data"]["value"]
                                await asyncio.to_thread(comfyui.post_json, "/interrupt", {})
                        if data["type"] in ("execution_interrupted", "execution_success", "execution_error") and \
                                data["data"].get("prompt_id") == body["prompt_id"]:
                            return data["type"], progress, previews, body["prompt_id"]
        return None, progress, previews, None

    kind, progress, previews, prompt_id = asyncio.run(asyncio.wait_for(watch(), 120))
    assert kind == "execution_interrupted"
    assert progress[:3] == [1, 2, 3] and max(progress) <= 5          # stopped within a step or two of Cancel
    assert previews >= 3                                              # a preview image per step


def test_sizes_the_model_cannot_take_are_refused_before_any_weight_loads(comfyui, reference_name):
    for width, height in ((72, 64), (64, 48), (4096, 64)):
        status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, reference_name, {
            "2": local_node(width=width, height=height)})})
        assert status == 400 and "allowed range is 64–2048 in multiples of 16" in json.dumps(
            body["node_errors"]["2"], ensure_ascii=False)
    names = comfyui.local_models
    bad_loader = loader_node(comfyui)
    bad_loader["inputs"].update(vae=FROM_MODEL)
    status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, reference_name, {"2": local_node()},
                                                                 bad_loader)})
    assert status == 400 and "needs its own VAE" in json.dumps(body["node_errors"]["10"])
    gguf_in_fp8 = loader_node(comfyui)
    gguf_in_fp8["inputs"].update(flux_model=names["flux_gguf"], weight_format="fp8_e4m3fn")
    status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, reference_name, {"2": local_node()},
                                                                 gguf_in_fp8)})
    assert status == 400 and "already quantized" in json.dumps(body["node_errors"]["10"])
    assert names["flux_file"]


def test_a_missing_model_file_is_named_with_where_to_get_it(comfyui, reference_name):
    target = comfyui.base / "models" / "instantcharacter" / "instantcharacter-tiny.bin"
    moved = target.with_suffix(".away")
    target.rename(moved)
    try:
        loader = loader_node(comfyui, memory_mode="model_offload")          # a new loader: not cached
        entry = comfyui.run(graph(comfyui, reference_name, {"2": local_node()}, loader))
    finally:
        moved.rename(target)
    message = error_message(entry)
    assert "instantcharacter-tiny.bin" in message and "Tencent/InstantCharacter" in message


def test_comfyui_manages_a_resident_pipeline_and_unload_models_frees_it(comfyui, reference_name):
    """ComfyUI counts each phase of a resident pipeline (text encoders, image encoders, denoiser, VAE)
    among its loaded models: a rerun finds them loaded, "Unload models" (POST /free) takes them off,
    and the next run asks ComfyUI to place the ones it needs again."""
    request = "Requested to load InstantCharacterWeights"
    loader = loader_node(comfyui)
    loader["inputs"]["dtype"] = "fp32"                 # = auto on the CPU, but a loader of its own
    before = comfyui.log_text().count(request)
    first = comfyui.run(graph(comfyui, reference_name, {"2": local_node(seed=11)}, loader))
    assert first["status"]["status_str"] == "success"
    assert comfyui.log_text().count(request) == before + 4          # its four phases placed
    second = graph(comfyui, reference_name, {"2": local_node(seed=12)}, loader)
    comfyui.run(second)
    assert comfyui.log_text().count(request) == before + 4          # still loaded: none placed again
    assert "model management did not take" not in comfyui.log_text()    # managed, not the fallback

    comfyui.unload_models(last_prompt=second)
    after_free = comfyui.run(graph(comfyui, reference_name, {"2": local_node(seed=13)}, loader))
    # unloaded; a new seed (prompt and reference cached) needs the denoiser and the VAE back
    assert comfyui.log_text().count(request) == before + 6
    # and the weights came back whole: the same image as a second pipeline that was never unloaded
    offloaded = comfyui.run(graph(comfyui, reference_name, {"2": local_node(seed=13)},
                                  loader_node(comfyui, memory_mode="model_offload")))
    assert np.array_equal(np.asarray(outputs(comfyui, after_free, "2")[0][0]),
                          np.asarray(outputs(comfyui, offloaded, "2")[0][0]))


def test_nf4_is_refused_at_queue_time_where_it_cannot_run(comfyui, reference_name):
    """bitsandbytes' 4-bit kernels are made for CUDA GPUs: on this CPU-only ComfyUI the queue refuses
    NF4 with what it needs and what to choose instead, before any weight loads."""
    loader = loader_node(comfyui)
    loader["inputs"]["weight_format"] = "nf4"
    status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, reference_name, {"2": local_node()},
                                                                 loader)})
    message = json.dumps(body["node_errors"]["10"])
    assert status == 400 and "nf4 needs a CUDA GPU and bitsandbytes" in message
    assert "ComfyUI computes on the CPU here" in message and "fp8_e4m3fn or a GGUF file" in message


def test_an_all_in_one_flux_checkpoint_is_listed_and_gives_the_separate_files_image(comfyui, reference_name):
    """Comfy-Org's all-in-one layout in models/checkpoints: listed (the SDXL checkpoints there are
    not), and the same image as the four single files holding the same weights."""
    options = comfyui.get_json("/object_info")[LOADER]["input"]["required"]["flux_model"][1]["options"]
    assert comfyui.local_models["flux_checkpoint"] in options
    assert not [name for name in options if "sdxl" in name or "sd_xl" in name]
    images = []
    for source in ("checkpoint", "files"):
        entry = comfyui.run(graph(comfyui, reference_name, {"2": local_node(seed=21)}, loader_node(comfyui, source)))
        [image], info = outputs(comfyui, entry, "2")
        images.append(np.asarray(image))
    assert np.array_equal(images[0], images[1])


def test_missing_files_queue_and_the_loader_that_runs_names_them(comfyui, reference_name):
    """A shared workflow naming files this user lacks is accepted (an unchosen local branch must not
    block a prompt); the loader that runs names the input, the file, the folders and where to get it."""
    loader = loader_node(comfyui, memory_mode="model_offload")
    loader["inputs"].update(flux_model="flux1-dev-not-here.safetensors", siglip="(none found)")
    status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, reference_name, {"2": local_node()}, loader)})
    assert status == 200, body
    entry = comfyui.wait(body["prompt_id"])
    message = error_message(entry)
    models = comfyui.base / "models"
    assert "flux_model: 'flux1-dev-not-here.safetensors' is not in " in message
    assert str(models / "diffusion_models") in message
    assert "black-forest-labs/FLUX.1-dev" in message
    assert f"siglip: no folder found in {models / 'clip_vision'}" in message and "google/siglip-so400m" in message


def test_a_name_that_leaves_the_model_folders_is_refused_at_queue_time(comfyui, reference_name):
    outside = comfyui.base / "outside"
    (outside / "x").mkdir(parents=True, exist_ok=True)
    (outside / "x" / "config.json").write_text("{}")
    loader = loader_node(comfyui)
    loader["inputs"]["siglip"] = "clip_vision/../../outside/x"
    status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, reference_name, {"2": local_node()}, loader)})
    assert status == 400
    [error] = body["node_errors"]["10"]["errors"]
    assert ("siglip: 'clip_vision/../../outside/x' is not a name from the model folders (it steps out of the folder "
            "with '..')") in error["details"]


def test_a_file_of_the_wrong_kind_is_refused_at_queue_time_once_under_its_input(comfyui, reference_name):
    names = comfyui.local_models
    loader = loader_node(comfyui)
    loader["inputs"]["clip_l"] = names["t5xxl"]
    status, body = comfyui.post_json("/prompt", {"prompt": graph(comfyui, reference_name, {"2": local_node()}, loader)})
    assert status == 400
    [error] = body["node_errors"]["10"]["errors"]
    assert error["details"] == ("clip_l: t5xxl-tiny.safetensors is a T5 text encoder; choose the CLIP-L text encoder "
                                "(clip_l.safetensors)")
