"""Native InstantID (nodes/native_instantid.py) against the all-in-one pipeline, call by call, on tiny
models in shapes ComfyUI loads faithfully (tests/instantid_models.py: a Segmind-Vega-like SDXL UNet
and its IdentityNet), fp32 on the CPU, in this process with the ComfyUI the tests use (COMFYUI_DIR).

ComfyUI's side is the UNet as CheckpointLoaderSimple loads it from the single file and the
IdentityNet as ControlNetLoader loads it, called through ComfyUI's sampler machinery (CFGGuider →
calc_cond_batch → ControlNet.get_control → apply_model) with conditioning in ComfyUI's format. The
pipeline's side is InstantIDPipeline.generate itself (its UNet + IdentityNet + face adapter, its own
prompt encoding and face tokens): its first step's denoised latents, read through on_step. Both get
the same latents (the pipeline's seeded noise × its init_noise_sigma: √(σ₀²+1) for Euler with leading
spacing, where ComfyUI would scale by σ₀), the same sigma, text embeddings, keypoint image and face.

The whole image: ComfyUI's euler KSAMPLER over generate's own sigmas from its noise (× √(σ₀²+1)/σ₀)
gives generate's final latents and decoded image; ComfyUI's own SDXL schedules give other images.
"""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch

import instantid_models as tiny
from comfyui_engine import ENGINE_SERVER_AND_PACK
from comfyui_server import REPO_ROOT, comfyui_dir

SIZE = 128                       # pixels: a 16×16 latent, three UNet levels
PROMPT, NEGATIVE = "a photo of a woman, film grain", "blurry, lowres"
GUIDANCE = 5.0
IDENTITY, ADAPTER = 0.8, 0.8


def tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, reference.abs().max().item())


@pytest.fixture(scope="module")
def comfy():
    path = str(comfyui_dir() / "ComfyUI")
    if path not in sys.path:
        sys.path.append(path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.controlnet
    import comfy.model_management
    import comfy.samplers
    import comfy.sd

    return comfy


@pytest.fixture(scope="module")
def native(comfy):
    """nodes/native_instantid.py imported as ComfyUI imports the pack, without nodes/__init__.py."""
    for name, folder in (("charid_native_test", REPO_ROOT), ("charid_native_test.nodes", REPO_ROOT / "nodes")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module("charid_native_test.nodes.native_instantid")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny.build_native_instantid(tmp_path_factory.mktemp("tiny-native-instantid"))


@pytest.fixture(scope="module")
def pipe(files):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from pipelines.local.instantid.adapter import build_face_adapter
    from pipelines.local.instantid.pipeline import InstantIDPipeline, SDXLModels

    unet = tiny.native_unet().eval()
    controlnet = ControlNetModel.from_pretrained(files.controlnet_folder).eval()
    clip_l, clip_g = tiny.native_text_encoders()
    assert isinstance(unet, UNet2DConditionModel)
    adapter = build_face_adapter(torch.load(files.adapter, weights_only=True), unet)
    models = SDXLModels(unet=unet, controlnet=controlnet, vae=tiny.vae(), text_encoder=clip_l.eval(),
                        text_encoder_2=clip_g.eval(), tokenizer=tiny.tokenizers()[0],
                        scheduler_config=dict(tiny.scheduler().config))
    return InstantIDPipeline(models=models, adapter=adapter, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def face():
    from pipelines.local.instantid.conditioning import FaceConditioning

    generator = np.random.default_rng(7)
    kps = np.array([[44, 52], [84, 52], [64, 72], [48, 94], [80, 94]], np.float32)
    return FaceConditioning(generator.standard_normal(512).astype(np.float32) * 20, kps, (SIZE, SIZE),
                            np.array([28, 30, 100, 112], np.float32))


@pytest.fixture(scope="module")
def comfy_unet(comfy, files):
    model, *_ = comfy.sd.load_checkpoint_guess_config(str(files.checkpoint), output_vae=False, output_clip=False)
    return model


@pytest.fixture(scope="module")
def comfy_controlnet(comfy, files):
    return comfy.controlnet.load_controlnet(str(files.controlnet_ldm))


@pytest.fixture(scope="module")
def adapter(native, files):
    return native.load_adapter(files.adapter, torch.float32, torch.device("cpu"), torch.device("cpu"))


# ---- the two sides ---------------------------------------------------------------------------------

class FirstStepTaken(Exception):
    pass


def pipeline_step(pipe, face, steps: int, identity=IDENTITY, adapter_strength=ADAPTER, region=True, seed=3):
    """(initial latents, sigma, the pipeline's denoised latents after its first step's CFG)."""
    from diffusers.utils.torch_utils import randn_tensor

    scheduler = pipe.make_scheduler("euler")
    scheduler.set_timesteps(steps)
    sigma = float(scheduler.sigmas[0])
    latents = randn_tensor((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(seed),
                           dtype=torch.float32) * scheduler.init_noise_sigma
    found = []

    def first(info):
        found.append(info.denoised.clone())
        raise FirstStepTaken

    with pytest.raises(FirstStepTaken):
        pipe.generate(face, PROMPT, NEGATIVE, seed=seed, steps=steps, guidance=GUIDANCE, identity_strength=identity,
                      adapter_strength=adapter_strength, enhance_face_region=region, on_step=first)
    return latents, sigma, found[0]


def comfy_conditioning(pipe):
    text = pipe.encode_prompt(PROMPT, NEGATIVE)
    size = {"width": SIZE, "height": SIZE}
    return ([[text.embeds, {"pooled_output": text.pooled, **size}]],
            [[text.negative_embeds, {"pooled_output": text.negative_pooled, **size}]])


def comfy_denoised(comfy, model, positive, negative, latents, sigma: float, cfg: float = GUIDANCE):
    """One CFG evaluation through ComfyUI's sampler machinery at (latents, sigma)."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    found = {}

    def evaluate_once(model_k, noise, sigmas, extra_args=None, callback=None, disable=None):
        found["denoised"] = model_k(latents, sigmas[0] * latents.new_ones([1]), **extra_args)
        return noise

    with torch.inference_mode():
        guider.sample(torch.zeros_like(latents), torch.zeros_like(latents), comfy.samplers.KSAMPLER(evaluate_once),
                      torch.tensor([sigma, 0.0]), seed=0)
    return found["denoised"]


def native_denoised(comfy, native, pipe, face, model, controlnet, adapter, latents, sigma, identity=IDENTITY,
                    adapter_strength=ADAPTER, region=True, **options):
    positive, negative = comfy_conditioning(pipe)
    patched, positive, negative = native.apply_instantid(model, positive, negative, adapter, face, controlnet, identity,
                                                         adapter_strength, enhance_face_region=region, **options)
    return comfy_denoised(comfy, patched, positive, negative, latents, sigma)


# ---- the files ComfyUI loads ------------------------------------------------------------------------

def test_comfyui_loads_the_tiny_files_faithfully(comfy, files, comfy_unet, comfy_controlnet):
    import comfy.utils

    assert type(comfy_unet.model).__name__ == "SDXL"
    stored = comfy.utils.load_torch_file(str(files.checkpoint))
    prefix = "model.diffusion_model."
    stored = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
    loaded = comfy_unet.model.diffusion_model.state_dict()
    assert set(loaded) == set(stored) and all(torch.equal(loaded[k], stored[k]) for k in stored)
    stored = comfy.utils.load_torch_file(str(files.controlnet_ldm))
    loaded = comfy_controlnet.control_model.state_dict()
    assert set(loaded) == set(stored) and all(torch.equal(loaded[k], stored[k]) for k in stored)


# ---- (a) per-call parity -------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [2, 4])
@pytest.mark.parametrize("region", [True, False])
def test_one_call_equals_the_pipeline(comfy, native, pipe, face, comfy_unet, comfy_controlnet, adapter, steps, region,
                                      record_property):
    latents, sigma, reference = pipeline_step(pipe, face, steps, region=region)
    ours = native_denoised(comfy, native, pipe, face, comfy_unet, comfy_controlnet, adapter, latents, sigma,
                           region=region)
    positive, negative = comfy_conditioning(pipe)
    plain = comfy_denoised(comfy, comfy_unet, positive, negative, latents, sigma)
    difference = (ours - reference).abs().max().item()
    effect = (plain - reference).abs().max().item()
    record_property("max_difference", difference)
    print(f"\nsteps={steps} sigma={sigma:.4f} region={region}: |native - pipeline| = {difference:.3g}, "
          f"|unpatched - pipeline| = {effect:.3g}, tolerance {tolerance(reference):.3g}")
    assert difference < tolerance(reference)
    assert effect > 1000 * tolerance(reference)


def test_strengths_zero_are_the_unpatched_model_and_no_controlnet(comfy, native, pipe, face, comfy_unet,
                                                                  comfy_controlnet, adapter):
    latents, sigma, reference = pipeline_step(pipe, face, 2, identity=0.0, adapter_strength=0.0)
    positive, negative = comfy_conditioning(pipe)
    plain = comfy_denoised(comfy, comfy_unet, positive, negative, latents, sigma)
    ours = native_denoised(comfy, native, pipe, face, comfy_unet, comfy_controlnet, adapter, latents, sigma,
                           identity=0.0, adapter_strength=0.0)
    assert torch.equal(ours, plain)
    assert (ours - reference).abs().max() < tolerance(reference)
    patched, new_positive, _ = native.apply_instantid(comfy_unet, positive, negative, adapter, face, comfy_controlnet,
                                                      0.0, 0.0)
    assert new_positive is positive and not patched.model_options.get("transformer_options", {}).get("patches_replace")


def test_each_strength_alone_matches_the_pipeline(comfy, native, pipe, face, comfy_unet, comfy_controlnet, adapter):
    for identity, strength in ((IDENTITY, 0.0), (0.0, ADAPTER)):
        latents, sigma, reference = pipeline_step(pipe, face, 2, identity=identity, adapter_strength=strength)
        ours = native_denoised(comfy, native, pipe, face, comfy_unet, comfy_controlnet, adapter, latents, sigma,
                               identity=identity, adapter_strength=strength)
        assert (ours - reference).abs().max() < tolerance(reference), (identity, strength)


def test_outside_the_window_neither_applies(comfy, native, pipe, face, comfy_unet, comfy_controlnet, adapter):
    latents, sigma, _ = pipeline_step(pipe, face, 2)
    positive, negative = comfy_conditioning(pipe)
    plain = comfy_denoised(comfy, comfy_unet, positive, negative, latents, sigma)
    late = native_denoised(comfy, native, pipe, face, comfy_unet, comfy_controlnet, adapter, latents, sigma,
                           start_percent=0.9, end_percent=1.0)
    # neither adds anything; cond and uncond then carry a ControlNet object (inactive), so equal up to
    # float summation order, not bit for bit
    assert (late - plain).abs().max() < tolerance(plain)
    inside = native_denoised(comfy, native, pipe, face, comfy_unet, comfy_controlnet, adapter, latents, sigma)
    assert (inside - plain).abs().max() > 1000 * tolerance(plain)


def test_cond_and_uncond_share_the_identitynet_and_run_as_one_batch(comfy, native, pipe, face, comfy_unet,
                                                                     comfy_controlnet, adapter):
    """ComfyUI batches cond and uncond only when their ControlNet is one object (as its Apply ControlNet
    sets it): one UNet call of batch 2 per step, as the pipeline's, not two of batch 1."""
    latents, sigma, reference = pipeline_step(pipe, face, 2)
    positive, negative = comfy_conditioning(pipe)
    patched, positive, negative = native.apply_instantid(comfy_unet, positive, negative, adapter, face,
                                                         comfy_controlnet, IDENTITY, ADAPTER, enhance_face_region=True)
    assert positive[0][1]["control"] is negative[0][1]["control"]
    calls = []

    def counting(apply_model, args):
        calls.append((args["input"].shape[0], sorted(args["cond_or_uncond"])))
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = patched.clone()
    counted.set_model_unet_function_wrapper(counting)
    ours = comfy_denoised(comfy, counted, positive, negative, latents, sigma)
    assert calls == [(2, [0, 1])]
    assert (ours - reference).abs().max() < tolerance(reference)


def test_apply_leaves_the_given_model_and_conditioning_as_they_were(native, pipe, face, comfy_unet, comfy_controlnet,
                                                                   adapter):
    import copy

    positive, negative = comfy_conditioning(pipe)
    options = copy.deepcopy(comfy_unet.model_options)
    patched, new_positive, _ = native.apply_instantid(comfy_unet, positive, negative, adapter, face, comfy_controlnet)
    assert comfy_unet.model_options == options and "control" not in positive[0][1]
    assert "control" in new_positive[0][1] and new_positive[0][1]["cross_attn_controlnet"].shape[1] == 16
    with pytest.raises(native.NativeInstantIDError, match="already has InstantID"):
        native.apply_instantid(patched, positive, negative, adapter, face, comfy_controlnet)


def test_a_model_that_is_not_sdxl_is_refused_by_name(native, adapter, face):
    class Flux:                                     # what a MODEL's .model is for a FLUX checkpoint
        diffusion_model = torch.nn.Linear(1, 1)

    model = types.SimpleNamespace(model=Flux(), model_options={"transformer_options": {}})
    with pytest.raises(native.NativeInstantIDError, match="needs an SDXL model; this MODEL is Flux"):
        native.apply_instantid(model, [], [], adapter, face, None)


# ---- (b) the whole image ---------------------------------------------------------------------------------
# ComfyUI's euler KSAMPLER through a CFGGuider (as SamplerCustomAdvanced runs it) over the pipeline's own
# sigmas, from the pipeline's own noise, against InstantIDPipeline.generate's final latents and image.
# The one scaling that differs: diffusers' Euler with leading spacing starts from noise × √(σ₀²+1)
# (init_noise_sigma); ComfyUI starts from noise × σ₀ unless σ₀ is its σ_max (then √(σ₀²+1)), and the
# pipeline's leading schedule never starts at σ_max. So ComfyUI gets the noise × √(σ₀²+1)/σ₀.

IMAGE_STEPS, IMAGE_SEED = 4, 11
IMAGE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pipeline_image(pipe, face):
    """generate's final latents and decoded image, the sigmas of the scheduler it made (closing 0
    included), its init_noise_sigma and its noise (the seeded CPU draw it makes)."""
    made = []
    make_scheduler = pipe.make_scheduler
    pipe.make_scheduler = lambda kind: made.append(make_scheduler(kind)) or made[-1]
    try:
        latents = pipe.generate(face, PROMPT, NEGATIVE, seed=IMAGE_SEED, steps=IMAGE_STEPS, guidance=GUIDANCE,
                                identity_strength=IDENTITY, adapter_strength=ADAPTER, enhance_face_region=True,
                                output="latent")
    finally:
        del pipe.make_scheduler                      # the class's method again
    scheduler, = made
    return types.SimpleNamespace(latents=latents, image=pipe.decode(latents, "pt"),
                                 sigmas=scheduler.sigmas.detach().clone().float(),
                                 init_noise_sigma=float(scheduler.init_noise_sigma), noise=pipeline_noise(IMAGE_SEED))


def pipeline_noise(seed: int) -> torch.Tensor:
    """generate's unscaled initial noise for `seed` (randn_tensor on a seeded CPU generator)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(seed),
                        dtype=torch.float32)


def comfy_sampled(comfy, model, positive, negative, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's euler KSAMPLER over `sigmas` from `noise` (empty latent, CFG 5) through a CFGGuider →
    the final latents in the pipeline's space (ComfyUI's latent scaling undone)."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(GUIDANCE)
    with torch.inference_mode():
        samples = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.ksampler("euler"), sigmas, seed=0,
                                disable_pbar=True)
    return model.model.process_latent_in(samples)


@pytest.fixture(scope="module")
def native_graph(native, pipe, face, comfy_unet, comfy_controlnet, adapter):
    """Apply InstantID on ComfyUI's SDXL with the pipeline's own prompt encoding."""
    positive, negative = comfy_conditioning(pipe)
    return native.apply_instantid(comfy_unet, positive, negative, adapter, face, comfy_controlnet, IDENTITY, ADAPTER,
                                  enhance_face_region=True)


def start_scale(comfy, model, sigmas: torch.Tensor, init_noise_sigma: float) -> float:
    """What ComfyUI's noise must be multiplied by to start where the pipeline starts."""
    sampling = model.get_model_object("model_sampling")
    sigma = float(sigmas[0])
    assert sigma < float(sampling.sigma_max), "ComfyUI would scale by √(σ₀²+1) itself"
    return init_noise_sigma / sigma


def test_the_whole_image_equals_the_pipelines_with_its_sigmas_and_noise(comfy, pipe, native_graph, pipeline_image,
                                                                         record_property):
    model, positive, negative = native_graph
    sigmas = pipeline_image.sigmas
    scale = start_scale(comfy, model, sigmas, pipeline_image.init_noise_sigma)
    ours = comfy_sampled(comfy, model, positive, negative, pipeline_image.noise * scale, sigmas)
    latent_difference = (ours - pipeline_image.latents).abs().max().item()
    image_difference = (pipe.decode(ours, "pt") - pipeline_image.image).abs().max().item()
    record_property("latent_difference", latent_difference)
    record_property("image_difference", image_difference)
    print(f"\n{IMAGE_STEPS} steps, CFG {GUIDANCE}, sigmas {[round(s, 4) for s in sigmas.tolist()]}, noise × "
          f"{pipeline_image.init_noise_sigma:.4f}/{float(sigmas[0]):.4f} = × {scale:.5f}: |native - pipeline| "
          f"latents {latent_difference:.3g} (of {pipeline_image.latents.abs().max().item():.3g}), "
          f"image {image_difference:.3g}")
    assert latent_difference < IMAGE_TOLERANCE and image_difference < IMAGE_TOLERANCE
    # the start scaling matters: ComfyUI's own (noise × σ₀) is another image
    unscaled = comfy_sampled(comfy, model, positive, negative, pipeline_image.noise * 1.0, sigmas)
    unscaled_difference = (unscaled - pipeline_image.latents).abs().max().item()
    # and a different noise draw is not mistaken for the same image
    other = comfy_sampled(comfy, model, positive, negative, pipeline_noise(IMAGE_SEED + 1) * scale, sigmas)
    other_difference = (other - pipeline_image.latents).abs().max().item()
    record_property("unscaled_noise_difference", unscaled_difference)
    record_property("other_noise_difference", other_difference)
    print(f"noise × σ₀ (ComfyUI's own start): latents {unscaled_difference:.3g}; another noise draw (seed "
          f"{IMAGE_SEED + 1}): latents {other_difference:.3g}")
    assert unscaled_difference > 100 * IMAGE_TOLERANCE
    assert other_difference > 1000 * IMAGE_TOLERANCE


def test_comfyuis_own_sdxl_schedules_give_other_images(comfy, pipe, native_graph, pipeline_image, record_property):
    """KSampler's way: a scheduler on ComfyUI's SDXL model sampling, the noise scaled by ComfyUI.
    'normal' and 'karras' start at σ_max (t = 999, noise × √(σ_max²+1)): other sigmas, other images.
    'ddim_uniform' takes the pipeline's timesteps (leading spacing, offset 1) so its sigmas, but starts
    from noise × σ₀ where the pipeline starts from noise × √(σ₀²+1)."""
    model, positive, negative = native_graph
    sampling = model.get_model_object("model_sampling")
    figures = {}
    for scheduler in ("normal", "karras", "ddim_uniform"):
        sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, IMAGE_STEPS).float()
        latents = comfy_sampled(comfy, model, positive, negative, pipeline_image.noise * 1.0, sigmas)
        sigma_gap = ((sigmas - pipeline_image.sigmas).abs().max().item() if sigmas.shape == pipeline_image.sigmas.shape
                     else float("inf"))
        figures[scheduler] = (sigma_gap, (latents - pipeline_image.latents).abs().max().item(),
                              (pipe.decode(latents, "pt") - pipeline_image.image).abs().max().item())
        record_property(scheduler, figures[scheduler])
        print(f"\n{scheduler}: sigmas {[round(s, 4) for s in sigmas.tolist()]} (pipeline "
              f"{[round(s, 4) for s in pipeline_image.sigmas.tolist()]}), max sigma difference {sigma_gap:.3g}, "
              f"|native - pipeline| latents {figures[scheduler][1]:.3g}, image {figures[scheduler][2]:.3g}")
    for scheduler in ("normal", "karras"):
        assert float(comfy.samplers.calculate_sigmas(sampling, scheduler, IMAGE_STEPS)[0]) == pytest.approx(
            float(sampling.sigma_max), rel=1e-5)
        assert figures[scheduler][0] > 1.0 and figures[scheduler][1] > 100 * IMAGE_TOLERANCE
    sigma_gap, latent_gap, _ = figures["ddim_uniform"]
    assert sigma_gap < 1e-5 * float(pipeline_image.sigmas[0]) and latent_gap > 100 * IMAGE_TOLERANCE


# ---- (c) mutations ---------------------------------------------------------------------------------------

def mutations(native):
    math = native.native_math

    def wrong_layer_order(monkeypatch, adapter):
        # the middle block numbered between the down and up blocks (its place in the UNet, not in diffusers)
        monkeypatch.setattr(math, "DIFFUSERS_BLOCK_ORDER", ("input", "middle", "output"))

    def dropped_resampler_norm(monkeypatch, adapter):
        monkeypatch.setattr(adapter.adapter.resampler.norm_out, "forward", lambda x: x)

    def hint_not_passed(monkeypatch, adapter):
        original = native.with_identitynet

        def without_face_tokens(*args, **kwargs):
            out = original(*args, **kwargs)
            for _, options in out:
                options.pop("cross_attn_controlnet")
            return out
        monkeypatch.setattr(native, "with_identitynet", without_face_tokens)

    return {"wrong_layer_order": wrong_layer_order, "dropped_resampler_norm": dropped_resampler_norm,
            "hint_not_passed": hint_not_passed}


@pytest.mark.parametrize("mutation", ["wrong_layer_order", "dropped_resampler_norm", "hint_not_passed"])
def test_a_mutated_patch_breaks_parity(comfy, native, pipe, face, comfy_unet, comfy_controlnet, files, mutation,
                                       monkeypatch, record_property):
    latents, sigma, reference = pipeline_step(pipe, face, 2)
    fresh = native.load_adapter(files.adapter, torch.float32, torch.device("cpu"), torch.device("cpu"))
    mutations(native)[mutation](monkeypatch, fresh)
    ours = native_denoised(comfy, native, pipe, face, comfy_unet, comfy_controlnet, fresh, latents, sigma)
    difference = (ours - reference).abs().max().item()
    record_property("mutated_difference", difference)
    print(f"\n{mutation}: |mutated native - pipeline| = {difference:.3g} (tolerance {tolerance(reference):.3g})")
    assert difference > 100 * tolerance(reference)


# ---- (d) through ComfyUI's executor with its KSampler ----------------------------------------------------

ENGINE = r"""
import asyncio, json, os, sys, tempfile
comfy_root, pack_root, pack_name, base, out = sys.argv[1:6]
sys.path.insert(0, comfy_root)
os.chdir(comfy_root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = base
import utils.extra_config
import server
import nodes, execution
import numpy as np
import torch
import comfy.model_management as mm
""" + ENGINE_SERVER_AND_PACK + r"""
# the pack's own class, as ComfyUI imported the pack
FaceConditioning = next(module for name, module in sys.modules.items()
                        if name.endswith(".pipelines.local.instantid.conditioning")).FaceConditioning

class TinyConditioning:
    # what CLIPTextEncode gives for SDXL, at the tiny UNet's widths (its tiny CLIPs are not ComfyUI's)
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "test"
    def make(self, seed):
        generator = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 77, 2048, generator=generator),
                  {"pooled_output": torch.randn(1, 1280, generator=generator), "width": 128, "height": 128}]],)

class TinyFace:
    # a precomputed face (embedding, keypoints, box), as the face node's output
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}
    RETURN_TYPES = ("CHARID_INSTANTID_FACE",)
    FUNCTION = "make"
    CATEGORY = "test"
    def make(self, seed):
        embedding = np.random.default_rng(seed).standard_normal(512).astype(np.float32) * 20
        kps = [[44, 52], [84, 52], [64, 72], [48, 94], [80, 94]]
        return (FaceConditioning(embedding, kps, (128, 128), [28, 30, 100, 112]),)

class KeepLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "name": ("STRING", {"default": "x"})}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "keep"
    CATEGORY = "test"
    def keep(self, samples, name):
        torch.save(samples["samples"], os.path.join(out, name + ".pt"))
        return {}

nodes.NODE_CLASS_MAPPINGS.update(TestTinyConditioning=TinyConditioning, TestTinyFace=TinyFace, TestKeepLatent=KeepLatent)
reports = []
executor = None
for case in json.loads(sys.stdin.read()):
    valid = asyncio.run(execution.validate_prompt("prompt", case, None))
    report = {"valid": valid[0], "node_errors": valid[3]}
    if valid[0]:
        stub = server.PromptServer.instance = Server()
        executor = executor or execution.PromptExecutor(stub, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        executor.server = stub
        executor.execute(case, "prompt", {"client_id": "test"}, valid[2])
        report["errors"] = [data.get("exception_message") for event, data in stub.events if event == "execution_error"]
        report["executed"] = [data["node"] for event, data in stub.events if event == "executing" and data.get("node")]
        report["cached"] = [node for event, data in stub.events if event == "execution_cached" for node in data["nodes"]]
        report["loaded"] = sorted(type(m.model).__name__ if not hasattr(m.model, "model") else type(m.model.model).__name__
                                  for m in mm.current_loaded_models)
    reports.append(report)
print("REPORT " + json.dumps(reports, default=str))
"""


def native_prompt(seed: int, keep: str, identity=IDENTITY, adapter_strength=ADAPTER, apply=True) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "sdxl-vega-tiny-unet.safetensors",
                                                      "weight_dtype": "default"}},
        "2": {"class_type": "CharIDLoadInstantIDAdapter", "inputs": {"adapter": "ip-adapter-vega-tiny.bin", "dtype": "fp32"}},
        "3": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "instantid-vega-tiny-ldm.safetensors"}},
        "4": {"class_type": "TestTinyFace", "inputs": {"seed": 7}},
        "5": {"class_type": "TestTinyConditioning", "inputs": {"seed": 1}},
        "6": {"class_type": "TestTinyConditioning", "inputs": {"seed": 2}},
        "7": {"class_type": "CharIDApplyInstantID",
              "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["6", 0], "adapter": ["2", 0],
                         "face": ["4", 0], "control_net": ["3", 0], "identity_strength": identity,
                         "adapter_strength": adapter_strength, "start_percent": 0.0, "end_percent": 1.0,
                         "enhance_face_region": True}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "9": {"class_type": "KSampler",
              "inputs": {"model": ["7", 0] if apply else ["1", 0], "positive": ["7", 1] if apply else ["5", 0],
                         "negative": ["7", 2] if apply else ["6", 0], "latent_image": ["8", 0], "seed": seed,
                         "steps": 2, "cfg": GUIDANCE, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "TestKeepLatent", "inputs": {"samples": ["9", 0], "name": keep}},
    }


@pytest.fixture(scope="module")
def engine_run(files, tmp_path_factory):
    """The nodes with ComfyUI's UNETLoader, ControlNetLoader and KSampler, run by ComfyUI's executor on
    the tiny files in the real model folders (one executor: its cache works as when a user queues again)."""
    import json
    import subprocess

    from comfyui_server import PACK_NAME

    base = tmp_path_factory.mktemp("native-instantid-base")
    out = tmp_path_factory.mktemp("native-instantid-out")
    tiny.copy_into({files.unet_file: base / "models" / "diffusion_models" / files.unet_file.name,
                    files.controlnet_ldm: base / "models" / "controlnet" / files.controlnet_ldm.name,
                    files.adapter: base / "models" / "instantid" / files.adapter.name})
    runs = [native_prompt(5, "face"), native_prompt(6, "face_new_seed"),
            native_prompt(5, "strengths_zero", identity=0.0, adapter_strength=0.0), native_prompt(5, "plain", apply=False)]
    result = subprocess.run([str(comfyui_dir() / "venv" / "bin" / "python"), "-c", ENGINE, str(comfyui_dir() / "ComfyUI"),
                             str(REPO_ROOT), PACK_NAME, str(base), str(out)],
                            input=json.dumps(runs), capture_output=True, text=True, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):]), {path.stem: torch.load(path) for path in out.glob("*.pt")}


def test_the_nodes_run_in_comfyui_with_its_ksampler(engine_run):
    reports, latents = engine_run
    for report in reports:
        assert report["valid"] and not report["errors"], report
    face, plain = latents["face"], latents["plain"]
    assert face.shape == plain.shape == (1, 4, SIZE // 8, SIZE // 8)
    assert (face - plain).abs().max() > 0.01                         # the face changes the image
    assert torch.equal(latents["strengths_zero"], plain)             # strengths 0: the MODEL and conditioning as they were
    assert "7" in reports[1]["cached"] and "7" not in reports[1]["executed"]     # a new seed applies nothing again
    assert (latents["face_new_seed"] - face).abs().max() > 0.01
    assert "InstantIDAdapterWeights" in reports[0]["loaded"]         # loaded with the MODEL by the sampler


def test_an_adapter_for_another_unet_is_refused_naming_both(native, files, comfy_unet, pipe, face):
    other = native.load_adapter(files.adapter, torch.float32, torch.device("cpu"), torch.device("cpu"))
    other.adapter.processors.pop()
    positive, negative = comfy_conditioning(pipe)
    with pytest.raises(native.NativeInstantIDError, match="16 face-attention layers .* 17 cross-attention layers"):
        native.apply_instantid(comfy_unet, positive, negative, other, face, None)
