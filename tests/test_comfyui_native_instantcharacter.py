"""Native InstantCharacter through a real ComfyUI over HTTP, on FLUX.1-layout files ComfyUI's own
loaders take: UNETLoader (a FLUX.1 transformer at FLUX's width 3072 — ComfyUI's detection hard-codes
24 heads × 128 — with one double and one single block, bf16 on disk), VAELoader (a random-weight FLUX
VAE at its real size), LoraLoaderModelOnly (a kohya LoRA on that transformer), Apply InstantCharacter
(native) and ComfyUI's KSampler → VAEDecode → SaveImage. The conditioning comes from a test-only node
(tests/comfyui_test_nodes/charid_test_flux_conditioning) that only this test ComfyUI loads: ComfyUI's
DualCLIPLoader always builds T5-XXL at full size (4.7 B parameters).

GGUF: with COMFYUI_GGUF_PACK naming a ComfyUI-GGUF checkout, the same transformer written as a Q8_0
GGUF runs through its UnetLoaderGGUF; without it that test skips, saying so."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_server import error_message

pytestmark = pytest.mark.comfyui

TEST_NODES = Path(__file__).resolve().parent / "comfyui_test_nodes" / "charid_test_flux_conditioning"
GGUF_PACK = os.environ.get("COMFYUI_GGUF_PACK", "")
SIZE = 64                           # pixels: an 8×8 latent, 16 image tokens
STEPS = 3


@pytest.fixture(scope="module")
def native_server(tmp_path_factory, emulator_servers):
    """A real ComfyUI with the native files in its model folders (plus the tiny SigLIP / DINOv2 the
    encoders loader lists) and the test-only conditioning node; the ComfyUI-GGUF pack too when
    COMFYUI_GGUF_PACK names it."""
    import instantcharacter_fidelity as cases
    import instantcharacter_models as tiny
    from conftest import start_comfyui

    base = tmp_path_factory.mktemp("comfyui-native-base")
    models = base / "models"
    local = tiny.install_into_models(tiny.build_tiny_files(tmp_path_factory.mktemp("tiny-models")), models)
    native = tiny.link_native_files(tiny.build_native_files(tmp_path_factory.mktemp("native-files"),
                                                            gguf=bool(GGUF_PACK), scaled_fp8=True), models)
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / TEST_NODES.name).symlink_to(TEST_NODES, target_is_directory=True)
    if GGUF_PACK:
        (base / "custom_nodes" / "ComfyUI-GGUF").symlink_to(Path(GGUF_PACK).resolve(), target_is_directory=True)
    # a non-FLUX MODEL for the refusal: a small SDXL UNet in ComfyUI's layout, as UNETLoader lists it
    import instantid_models
    from safetensors.torch import save_file

    prefix = "model.diffusion_model."
    full = instantid_models.ldm_checkpoint(instantid_models.native_unet(), instantid_models.vae(),
                                           *instantid_models.native_text_encoders())
    save_file({k[len(prefix):]: v.contiguous() for k, v in full.items() if k.startswith(prefix)},
              models / "diffusion_models" / "sdxl-vega-tiny-unet.safetensors")
    del full
    server = start_comfyui(base, emulator_servers, [])
    buffer = io.BytesIO()
    cases.reference_image().save(buffer, "PNG")
    server.reference = server.upload_image(buffer.getvalue(), "native_reference.png")
    server.names = {**native, "siglip": local["siglip"], "dinov2": local["dinov2"],
                    "sdxl_unet": "sdxl-vega-tiny-unet.safetensors"}
    try:
        yield server
    finally:
        server.stop()
        server.keep_log("comfyui-native-server.log")


def native_graph(server, weight: float = 0.9, apply: bool = True, seed: int = 3, steps: int = STEPS,
                 weight_dtype: str = "default", loader: dict | None = None, lora: bool = True) -> dict:
    names = server.names
    model_source = "1"
    prompt = {
        "1": loader or {"class_type": "UNETLoader", "inputs": {"unet_name": names["flux"], "weight_dtype": weight_dtype}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": names["vae"]}},
        "6": {"class_type": "TestFluxConditioning", "inputs": {"seed": 1, "guidance": 3.5}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["2", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "native/ic"}},
    }
    if lora:
        prompt["3"] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": ["1", 0], "lora_name": names["lora"], "strength_model": 1.0}}
        model_source = "3"
    if apply:
        prompt.update({
            "11": {"class_type": "CharIDLoadInstantCharacterAdapter", "inputs": {"adapter": names["adapter"], "dtype": "auto"}},
            "12": {"class_type": "CharIDLoadInstantCharacterEncoders",
                   "inputs": {"siglip": names["siglip"], "dinov2": names["dinov2"], "dtype": "auto"}},
            "13": {"class_type": "LoadImage", "inputs": {"image": server.reference}},
            "5": {"class_type": "CharIDApplyInstantCharacter",
                  "inputs": {"model": [model_source, 0], "adapter": ["11", 0], "image_encoders": ["12", 0],
                             "reference": ["13", 0], "weight": weight, "start_percent": 0.0, "end_percent": 1.0}}})
        model_source = "5"
    prompt["8"] = {"class_type": "KSampler",
                   "inputs": {"model": [model_source, 0], "positive": ["6", 0], "negative": ["6", 0],
                              "latent_image": ["7", 0], "seed": seed, "steps": steps, "cfg": 1.0,
                              "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    return prompt


def image_of(server, entry) -> np.ndarray:
    assert entry["status"]["status_str"] == "success", entry["status"]
    [image] = entry["outputs"]["10"]["images"]
    return np.asarray(Image.open(io.BytesIO(server.output_bytes(image))).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def images(native_server):
    """The graph with the character, without Apply, and with Apply at weight 0 (each run once)."""
    runs = {"character": native_graph(native_server), "plain": native_graph(native_server, apply=False),
            "weight_zero": native_graph(native_server, weight=0.0)}
    return {name: (image_of(native_server, native_server.run(prompt, timeout=600)), prompt)
            for name, prompt in runs.items()}


def test_the_character_changes_the_image_and_weight_zero_is_the_plain_graph(images):
    character, plain, weight_zero = (images[name][0] for name in ("character", "plain", "weight_zero"))
    assert character.shape == (SIZE, SIZE, 3)
    difference = np.abs(character - plain)
    print(f"\n|character - plain| max {difference.max()}, mean {difference.mean():.2f} (8-bit levels)")
    assert difference.max() > 10
    assert np.array_equal(weight_zero, plain)


def test_unload_models_then_the_same_prompt_gives_the_same_image(native_server, images):
    """"Unload models" takes the FLUX MODEL and the adapter off; the next run loads them again (ComfyUI
    logs each load) and gives the image it gave before, bit for bit."""
    character, prompt = images["character"]
    other_seed = native_graph(native_server, seed=4)
    image_of(native_server, native_server.run(other_seed, timeout=600))
    native_server.unload_models(last_prompt=other_seed)
    loads_before = native_server.log_text().count("Requested to load Flux")
    again = native_server.run(prompt, timeout=600)                  # seed 3 again: KSampler runs anew
    assert native_server.log_text().count("Requested to load Flux") > loads_before     # loaded again after the unload
    assert np.array_equal(image_of(native_server, again), character)


def test_progress_per_step_and_cancel_within_a_step(native_server):
    steps = 40
    prompt = native_graph(native_server, seed=11, steps=steps)

    kind, progress, seconds = native_server.cancel_at_progress(prompt, "8")
    print(f"\nprogress {progress}; ended {seconds:.2f} s after Cancel")
    assert kind == "execution_interrupted"
    assert progress[:2] == [1, 2] and max(progress) <= 4 and all(value <= steps for value in progress)
    assert seconds < 20                       # a step here takes 1–3 s (2 shared CPU cores)


def test_fp8_weights_from_unetloader_run(native_server):
    """UNETLoader's weight_dtype fp8_e4m3fn (weights stored in fp8, cast per layer as ComfyUI computes):
    one step, since each costs ComfyUI's casts of 0.55 B weights on the CPU."""
    entry = native_server.run(native_graph(native_server, weight_dtype="fp8_e4m3fn", steps=1), timeout=600)
    assert image_of(native_server, entry).std() > 1


def test_a_lora_after_apply_gives_the_image_a_lora_before_gives(native_server, images):
    # LoRA weight patches and the InstantCharacter patch live side by side on the cloned MODEL: the order
    # of LoraLoaderModelOnly and Apply does not matter
    prompt = native_graph(native_server)
    prompt["5"]["inputs"]["model"] = ["1", 0]
    prompt["3"]["inputs"]["model"] = ["5", 0]
    prompt["8"]["inputs"]["model"] = ["3", 0]
    after = image_of(native_server, native_server.run(prompt, timeout=600))
    assert np.array_equal(after, images["character"][0])


def test_scaled_fp8_weights_from_unetloader_run(native_server):
    """An "fp8 scaled" FLUX file (fp8 block weights with per-tensor scale_weight, the scaled_fp8 marker)
    through UNETLoader: ComfyUI's scaled-fp8 layers compute the patched blocks; the character still
    changes the image (one step each, with and without Apply)."""
    loader = {"class_type": "UNETLoader", "inputs": {"unet_name": native_server.names["scaled_fp8"],
                                                     "weight_dtype": "default"}}
    with_character = image_of(native_server, native_server.run(
        native_graph(native_server, loader=loader, lora=False, steps=1), timeout=600))
    plain = image_of(native_server, native_server.run(
        native_graph(native_server, loader=loader, lora=False, steps=1, apply=False), timeout=600))
    difference = np.abs(with_character - plain)
    print(f"\nscaled fp8: |character - plain| max {difference.max()}, mean {difference.mean():.2f}")
    assert with_character.std() > 1 and difference.max() > 10


@pytest.mark.skipif(not GGUF_PACK, reason="set COMFYUI_GGUF_PACK to a ComfyUI-GGUF checkout "
                                          "(github.com/city96/ComfyUI-GGUF) to run a GGUF FLUX through its UnetLoaderGGUF")
def test_a_gguf_flux_from_comfyui_gguf_runs(native_server, images):
    loader = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": native_server.names["gguf"]}}
    with_character = image_of(native_server, native_server.run(native_graph(native_server, loader=loader), timeout=600))
    plain = image_of(native_server, native_server.run(native_graph(native_server, loader=loader, apply=False), timeout=600))
    difference = np.abs(with_character - plain)
    print(f"\nGGUF Q8_0: |character - plain| max {difference.max()}; |GGUF - bf16| max "
          f"{np.abs(with_character - images['character'][0]).max()}")
    assert difference.max() > 10


def test_the_all_in_one_checkpoint_gives_the_image_the_separate_files_give(native_server):
    """CheckpointLoaderSimple on one file holding the same transformer (model.diffusion_model.*) and VAE
    (vae.*): Apply and KSampler give the image UNETLoader + VAELoader give, bit for bit."""
    separate = image_of(native_server, native_server.run(native_graph(native_server, lora=False), timeout=600))
    prompt = native_graph(native_server, lora=False,
                          loader={"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": native_server.names["checkpoint"]}})
    prompt["9"]["inputs"]["vae"] = ["1", 2]
    del prompt["2"]
    assert np.array_equal(image_of(native_server, native_server.run(prompt, timeout=600)), separate)


def test_a_non_flux_model_is_refused_by_name(native_server):
    prompt = native_graph(native_server, lora=False, loader={
        "class_type": "UNETLoader", "inputs": {"unet_name": native_server.names["sdxl_unet"], "weight_dtype": "default"}})
    entry = native_server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "error"
    failed = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert failed[0]["node_type"] == "CharIDApplyInstantCharacter"
    assert "needs a FLUX.1 model; this MODEL is SDXL" in error_message(entry)
