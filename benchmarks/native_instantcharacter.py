#!/usr/bin/env python3
"""Native InstantCharacter (ComfyUI's own FLUX MODEL, patched) vs the all-in-one pipeline: time per
step, printed (no asserts).

CPU (default; the tests' tiny random-weight models, fp32): the same reference, prompt embeddings,
noise, sigmas and steps on both sides. Native = ComfyUI's euler sampler in this process (a CFGGuider,
as SamplerCustomAdvanced runs it) on ComfyUI's FLUX built from the tiny BFL file with the adapter
applied by nodes/native_instantcharacter.py; all-in-one = InstantCharacterPipeline.generate. Also
ComfyUI's FLUX without the adapter, for what the subject branch costs natively. Target: native
≤ 1.05 × the all-in-one's time per step.

    .comfyui/venv/bin/python benchmarks/native_instantcharacter.py [--size 128] [--steps 8]

Full size (--full-size; meant for a GPU): ComfyUI's FLUX.1-dev built by its own detection at the
released size, SigLIP so400m, DINOv2-giant and the adapter with random weights (nothing to
download), weights bf16 or fp8_e4m3fn (as UNETLoader's weight_dtype; computed in --dtype), 1024²,
28 steps through ComfyUI's sampler and model management: seconds per image and peak VRAM (the
reference's features encoded once beforehand, as the encoder node does). `--scale tiny` runs the
same code at the tests' tiny sizes (a check on the CPU).

    python benchmarks/native_instantcharacter.py --full-size --device cuda

Needs the ComfyUI of COMFYUI_DIR (default .comfyui) importable in this process.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from native_common import import_comfyui, import_native, parse_arguments  # noqa: E402  (benchmarks/)
from timing import timed  # noqa: E402  (benchmarks/, the script's own folder)


def comfy_flux_from_file(comfy, path, heads: int, dtype, device):
    """ComfyUI's FLUX from a BFL-layout file as UNETLoader builds it, but for the head count (its
    detection assumes FLUX.1's 24) and the output channels (16)."""
    import torch

    state = comfy.utils.load_torch_file(str(path))
    unet_config = comfy.model_detection.detect_unet_config(state, "")
    unet_config.update(num_heads=heads, out_channels=unet_config["in_channels"])
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, state)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model(state, "")
    model.load_model_weights(state, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def cpu(args) -> None:
    import torch

    import instantcharacter_fidelity as cases
    import instantcharacter_models as tiny
    from pipelines.local.instantcharacter.loading import FluxFiles, InstantCharacterFiles, build_pipeline

    comfy = import_comfyui()
    native = import_native("native_instantcharacter")
    cpu_device = torch.device("cpu")
    files = tiny.build_tiny_files(Path(tempfile.mkdtemp(prefix="bench-native-instantcharacter-")))
    clip_tokenizer, t5_tokenizer = tiny.comfy_tokenizer_dirs()
    pipe = build_pipeline(InstantCharacterFiles(FluxFiles(folder=files.diffusers_folder), files.siglip_folder,
                                                files.dinov2_folder, files.adapter_bin, clip_tokenizer, t5_tokenizer))
    model = comfy_flux_from_file(comfy, files.transformer_file, tiny.TRANSFORMER["num_attention_heads"],
                                 torch.float32, cpu_device)
    adapter = native.load_adapter(files.adapter_bin, torch.float32, cpu_device, cpu_device)
    reference, prompt, size, steps = cases.reference_image(), "a knight in a misty forest", args.size, args.steps

    def all_in_one(seed):
        return pipe.generate(reference, prompt, width=size, height=size, seed=seed, steps=steps, output="latent")

    all_in_one(0)                                   # warm the caches (prompt, reference) and kernels
    sigmas = pipe.flux.scheduler.sigmas.detach().clone().float()
    embeds, pooled, _ = pipe.encode_prompt(prompt, 512)
    _, features = pipe.encode_reference(reference)
    patched, mechanism = native.apply_instantcharacter(model, adapter, features, 0.9)
    conditioning = [[embeds, {"pooled_output": pooled, "guidance": 3.5}]]

    def comfyui(which, seed):
        guider = comfy.samplers.CFGGuider(which)
        guider.set_conds(conditioning, conditioning)
        guider.set_cfg(1.0)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(1, pipe.flux.transformer.config.in_channels // 4, size // 8, size // 8, generator=generator)
        with torch.inference_mode():
            return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.ksampler("euler"), sigmas, seed=seed,
                                 disable_pbar=True)

    comfyui(patched, 0)
    comfyui(model, 0)
    seeds = iter(range(1, 1000))
    times = {"all-in-one pipeline": timed(lambda: all_in_one(next(seeds)), repeat=args.repeat),
             f"native ({mechanism})": timed(lambda: comfyui(patched, next(seeds)), repeat=args.repeat),
             "ComfyUI FLUX without the adapter": timed(lambda: comfyui(model, next(seeds)), repeat=args.repeat)}
    print(f"CPU, tiny models, fp32 ({torch.get_num_threads()} threads), {size}x{size}, {steps} steps, "
          f"median of {args.repeat}")
    for name, seconds in times.items():
        print(f"  {name:>34}: {seconds / steps * 1000:8.1f} ms per step")
    ratio = times[f"native ({mechanism})"] / times["all-in-one pipeline"]
    print(f"  native / all-in-one: {ratio:.3f} x (target <= 1.05)")


def full_size(args) -> None:
    import gc
    import json

    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    import instantcharacter_fidelity as cases
    import instantcharacter_models as tiny
    from local_instantcharacter import DINOV2_GIANT, SIGLIP_SO400M, fill_random_, randomized
    from pipelines.local.instantcharacter.adapter import build_adapter
    from pipelines.local.instantcharacter.features import reference_features
    from pipelines.local.instantcharacter.loading import image_encoders, shipped_config

    device = torch.device(args.device)
    comfy = import_comfyui(on_cpu=device.type == "cpu")
    native = import_native("native_instantcharacter")
    import comfy.model_management as mm

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    small = args.scale == "tiny"
    size, steps = args.size, args.steps

    # the reference's features, once (the encoder node's job), then the encoders are gone
    siglip = randomized(lambda: SiglipVisionModel(SiglipVisionConfig(**(tiny.SIGLIP if small else SIGLIP_SO400M))),
                        device, dtype)
    dinov2 = randomized(lambda: Dinov2Model(Dinov2Config(**(tiny.DINOV2 if small else DINOV2_GIANT))), device, dtype)
    encoders = image_encoders(siglip, dinov2)
    with torch.inference_mode():
        features = reference_features(cases.reference_image(), encoders.siglip, encoders.siglip_processor,
                                      encoders.dinov2, encoders.dinov2_processor, device, dtype)
    del siglip, dinov2, encoders

    if small:
        adapter_state = tiny.adapter_state()
    else:   # the official file's key layout and shapes (recorded from the reference's own modules)
        layout = json.loads((REPO_ROOT / "tests" / "data" / "instantcharacter_reference.json").read_text())
        adapter_state = {}
        for part, shapes in layout["official_layout"].items():
            adapter_state[part] = {}
            for key, shape in shapes.items():
                tensor = torch.empty(shape)
                fill_random_(key, tensor)
                adapter_state[part][key] = tensor

    # ComfyUI's FLUX as its detection builds it from the released layout (keys and shapes of a
    # diffusers FLUX.1-dev made on the meta device, through ComfyUI's own key map)
    config = {k: v for k, v in shipped_config("flux_transformer.json").items() if not k.startswith("_")}
    if small:
        config.update(tiny.TRANSFORMER)
    with torch.device("meta"):
        layout = tiny.bfl_transformer_state(FluxTransformer2DModel(**config))
    unet_config = comfy.model_detection.detect_unet_config(layout, "")
    unet_config.update(num_heads=config["num_attention_heads"], out_channels=unet_config["in_channels"])
    print(f"{args.scale} size, random weights, {device}, compute {args.dtype}, {size}x{size}, {steps} steps, "
          f"ComfyUI's euler sampler")
    for weight_format in ("bf16", "fp8_e4m3fn"):
        weight_dtype = {"bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}[weight_format]
        model_config = comfy.model_detection.model_config_from_unet_config(dict(unet_config), layout)
        model_config.set_inference_dtype(weight_dtype, None if weight_dtype == dtype else dtype)
        model = model_config.get_model({}, "")
        state = {}
        for key, tensor in layout.items():    # filled on the device (fast), stored as UNETLoader stores them
            filled = torch.empty(tensor.shape, device=device, dtype=torch.bfloat16)
            fill_random_(key, filled)
            state[key] = filled.to(weight_dtype)
        model.load_model_weights(state, "")
        del state
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
        adapter = native.adapter_in_patcher(build_adapter(adapter_state, dtype), device, torch.device("cpu"))
        patched, mechanism = native.apply_instantcharacter(patcher, adapter, features, 0.9)
        generator = torch.Generator().manual_seed(0)
        embeds = torch.randn(1, 512, unet_config["context_in_dim"], generator=generator)
        pooled = torch.randn(1, unet_config["vec_in_dim"], generator=generator)
        conditioning = [[embeds, {"pooled_output": pooled, "guidance": 3.5}]]
        sigmas = torch.linspace(1, 0, steps + 1)           # the time per step does not depend on the values

        def sample(seed, count=steps):
            guider = comfy.samplers.CFGGuider(patched)
            guider.set_conds(conditioning, conditioning)
            guider.set_cfg(1.0)
            noise = torch.randn(1, unet_config["in_channels"], size // 8, size // 8,
                                generator=torch.Generator().manual_seed(seed))
            with torch.inference_mode():
                return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.ksampler("euler"),
                                     sigmas if count == steps else sigmas[[0, -1]], seed=seed, disable_pbar=True)

        sample(0, 1)                                    # load, warm kernels
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seeds = iter(range(1, 100))
        seconds = timed(lambda: sample(next(seeds)), repeat=args.repeat)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"
        print(f"  native ({mechanism}) weights {weight_format:>10}: {seconds:.2f} s per image, peak VRAM {peak}")
        mm.unload_all_models()
        del patched, patcher, adapter, model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    args = parse_arguments(__doc__.split("\n\n")[0], "bf16",
                           {"size": (128, 1024), "steps": (8, 28), "repeat": (3, 1)})
    full_size(args) if args.full_size else cpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
