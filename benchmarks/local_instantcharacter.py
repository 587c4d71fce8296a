#!/usr/bin/env python3
"""Local InstantCharacter: what it costs, printed (no asserts).

CPU (default; tiny random-weight models built by tests/instantcharacter_models.py):
1. milliseconds per step, and the adapter's overhead over plain FLUX (diffusers' own FluxPipeline
   with the same components, size, steps and encoded prompt);
2. what a new reference costs (image encoders, and the projector at every step);
3. encoder calls per rerun with a new seed (target: none), and the time of that rerun.

Full size (--full-size; meant for a GPU): FLUX.1-dev, T5-XXL, CLIP-L, SigLIP so400m, DINOv2-giant
and the adapter at their released sizes with random weights (nothing to download), 1024², 28 steps:
seconds per image and peak VRAM for each memory mode and weight format (bf16, fp8 storage, NF4 where
bitsandbytes is installed), and — with --reference — the reference pipeline on the same modules in
the same run. `--scale tiny` runs the same code with the tests' tiny sizes (a check on the CPU).

    .comfyui/venv/bin/python benchmarks/local_instantcharacter.py
    python benchmarks/local_instantcharacter.py --full-size --device cuda --reference /path/to/InstantCharacter
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from timing import timed  # noqa: E402  (benchmarks/, the script's own folder)


def cpu() -> None:
    import torch
    from diffusers import FluxPipeline

    import instantcharacter_fidelity as cases
    import instantcharacter_models as tiny
    from pipelines.local.instantcharacter.loading import FluxFiles, InstantCharacterFiles, build_pipeline

    torch.set_num_threads(max(1, torch.get_num_threads()))
    files = tiny.build_tiny_files(Path(tempfile.mkdtemp(prefix="bench-instantcharacter-")))
    clip_tokenizer, t5_tokenizer = tiny.comfy_tokenizer_dirs()
    pipe = build_pipeline(InstantCharacterFiles(FluxFiles(folder=files.diffusers_folder), files.siglip_folder,
                                                files.dinov2_folder, files.adapter_bin, clip_tokenizer, t5_tokenizer))
    plain = FluxPipeline.from_pretrained(str(files.diffusers_folder), local_files_only=True)
    reference, prompt = cases.reference_image(), "a knight in a misty forest"
    size, steps = dict(width=256, height=256), 20

    pipe.generate(reference, prompt, seed=0, steps=steps, **size, output="latent")      # warm caches and kernels
    embeds, pooled, _ = pipe.encode_prompt(prompt, 512)
    with_adapter = timed(lambda: pipe.generate(reference, prompt, seed=1, steps=steps, **size, output="latent"))
    # plain FLUX given the same (already encoded) prompt: the difference is the subject attention
    without = timed(lambda: plain(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=steps,
                                  guidance_scale=3.5, generator=torch.Generator().manual_seed(1),
                                  output_type="latent", **size))
    print(f"CPU, tiny models ({torch.get_num_threads()} threads), {size['width']}x{size['height']}, {steps} steps")
    print(f"1. {with_adapter / steps * 1000:.1f} ms per step with the adapter; plain FLUX (diffusers, same encoded "
          f"prompt) {without / steps * 1000:.1f} ms per step: overhead {100 * (with_adapter / without - 1):+.0f} %")

    other = reference.rotate(90)
    first = timed(lambda: pipe.generate(other, prompt, seed=1, steps=steps, **size, output="latent"), repeat=1)
    print(f"2. first run with a new reference (image encoders + {steps} projector runs): {first:.2f} s, "
          f"{first - with_adapter:+.2f} s over a rerun")

    before = dict(vars(pipe.counters))
    rerun = timed(lambda: pipe.generate(reference, prompt, seed=2, steps=steps, **size, output="latent"), repeat=1)
    calls = {key: value - before[key] for key, value in vars(pipe.counters).items()}
    print(f"3. rerun with a new seed: text encoder {calls['text_encoder']}, image encoders "
          f"{calls['image_encoders']}, projector {calls['projector']} calls (target 0, 0, 0); "
          f"transformer {calls['transformer']} calls; {rerun:.2f} s")


# the released image encoders (their Hugging Face configs)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14)
DINOV2_GIANT = dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4, use_swiglu_ffn=True,
                    image_size=518, patch_size=14, layerscale_value=1.0)


def randomized(make, device, dtype):
    """A module made on the meta device, then given random weights on `device` (a 12B-parameter
    transformer fills in a second on a GPU): matrices N(0, 1/fan_in), norms 1, biases 0."""
    import torch

    with torch.device("meta"):
        module = make()
    module.to_empty(device=device)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                if not name.endswith("position_ids"):
                    raise RuntimeError(f"no rule for the buffer {name}")
                tensor.copy_(torch.arange(tensor.shape[-1], device=device).expand_as(tensor))
            else:
                fill_random_(name, tensor)
    # torch's own .to: diffusers' override warns about from_pretrained, which is not how these are made
    return torch.nn.Module.to(module, dtype).eval().requires_grad_(False)


def fill_random_(name: str, tensor) -> None:
    if tensor.ndim >= 2:
        tensor.normal_(0, tensor[0].numel() ** -0.5)
    else:
        tensor.fill_(0.0 if name.endswith("bias") else 1.0)


def full_size_parts(scale: str, device, dtype, tokenizer_dirs):
    """(FluxPipeline with the adapter installed, image encoders, adapter) with random weights."""
    import json

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import (CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model, SiglipVisionConfig,
                              SiglipVisionModel, T5Config, T5EncoderModel)

    import instantcharacter_models as tiny
    from pipelines.local.instantcharacter.adapter import build_adapter
    from pipelines.local.instantcharacter.loading import (image_encoders, install_adapter, load_tokenizers,
                                                          shipped_config)

    small = scale == "tiny"

    def config(name, sizes):
        values = {k: v for k, v in shipped_config(name).items() if not k.startswith("_")}
        return {**values, **(sizes if small else {})}

    transformer = randomized(lambda: FluxTransformer2DModel(**config("flux_transformer.json", tiny.TRANSFORMER)),
                             device, dtype)
    vae = randomized(lambda: AutoencoderKL(**config("flux_vae.json", tiny.VAE)), device, dtype)
    clip = randomized(lambda: CLIPTextModel(CLIPTextConfig(**config("clip_l.json", tiny.CLIP))), device, dtype)
    t5 = randomized(lambda: T5EncoderModel(T5Config(**config("t5xxl.json", tiny.T5))), device, dtype)
    siglip = randomized(lambda: SiglipVisionModel(SiglipVisionConfig(**(tiny.SIGLIP if small else SIGLIP_SO400M))),
                        device, dtype)
    dinov2 = randomized(lambda: Dinov2Model(Dinov2Config(**(tiny.DINOV2 if small else DINOV2_GIANT))), device, dtype)
    if small:
        state = tiny.adapter_state()
    else:   # the official file's key layout and shapes (recorded from the reference's own modules)
        layout = json.loads((REPO_ROOT / "tests" / "data" / "instantcharacter_reference.json").read_text())
        state = {part: {key: torch.empty(shape, device=device) for key, shape in shapes.items()}
                 for part, shapes in layout["official_layout"].items()}
        for part in state.values():
            for key, tensor in part.items():
                fill_random_(key, tensor)
    adapter = build_adapter(state, dtype)
    encoders = image_encoders(siglip, dinov2)
    clip_tokenizer, t5_tokenizer = load_tokenizers(*tokenizer_dirs)
    scheduler = FlowMatchEulerDiscreteScheduler(**config("flux_scheduler.json", {}))
    flux = FluxPipeline(transformer=transformer, vae=vae, text_encoder=clip, text_encoder_2=t5, scheduler=scheduler,
                        tokenizer=clip_tokenizer, tokenizer_2=t5_tokenizer)
    install_adapter(flux.transformer, adapter, encoders, Path("random adapter"))
    return flux, encoders, adapter


def reference_pipeline(code, flux, encoders, adapter):
    """The reference's own pipeline, projector and processors over the same modules and weights (its
    processors replace ours on the shared transformer until `restore` is called)."""
    import torch

    ours = dict(flux.transformer.attn_processors)
    size, r = adapter.projector.size, adapter.projector.size.resampler
    projector = code.projector(   # the sizes our adapter read from its weights (at full size: its defaults)
        inner_dim=size.feature_dim, num_attention_heads=size.feature_heads, attention_head_dim=64,
        cross_attention_dim=size.feature_dim, num_layers=size.feature_layers, dim=r.dim, depth=r.depth,
        dim_head=64, heads=r.heads, num_queries=r.num_queries, embedding_dim=size.feature_dim,
        output_dim=r.output_dim, ff_mult=4, timestep_in_dim=r.timestep_dim, timestep_flip_sin_to_cos=True,
        timestep_freq_shift=0)
    device = flux.transformer.device
    dtype = flux.transformer.dtype
    projector.load_state_dict(adapter.projector.state_dict(), strict=True)
    config = flux.transformer.config
    processors = {name: code.processor(hidden_size=config.num_attention_heads * config.attention_head_dim,
                                       ip_hidden_states_dim=flux.text_encoder_2.config.d_model)
                  for name in ours}
    torch.nn.ModuleList(processors.values()).load_state_dict(
        torch.nn.ModuleList(adapter.processors).state_dict(), strict=True)
    flux.transformer.set_attn_processor({k: v.to(device, dtype) for k, v in processors.items()})
    pipe = code.pipeline(scheduler=flux.scheduler, vae=flux.vae, text_encoder=flux.text_encoder,
                         tokenizer=flux.tokenizer, text_encoder_2=flux.text_encoder_2, tokenizer_2=flux.tokenizer_2,
                         transformer=flux.transformer)
    pipe.siglip_image_encoder, pipe.siglip_image_processor = encoders.siglip, encoders.siglip_processor
    pipe.dino_image_encoder_2, pipe.dino_image_processor_2 = encoders.dinov2, encoders.dinov2_processor
    pipe.subject_image_proj_model = projector.to(device, dtype)
    return pipe, lambda: flux.transformer.set_attn_processor(ours)


def full_size(args) -> None:
    import gc

    import torch

    import instantcharacter_fidelity as cases
    from pipelines.local.instantcharacter.loading import assemble_pipeline

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    tokenizer_dirs = args.tokenizers or _comfy_tokenizer_dirs()
    code = None
    if args.reference:
        from instantcharacter_reference_code import import_reference
        code = import_reference(args.reference)
    configs = [("resident", "dtype"), ("resident", "fp8_e4m3fn"), ("model_offload", "dtype"),
               ("model_offload", "fp8_e4m3fn"), ("group_offload", "dtype")]
    try:
        import bitsandbytes  # noqa: F401
        configs += [("resident", "nf4"), ("model_offload", "nf4")]
    except ImportError:
        print("  (NF4 skipped: bitsandbytes is not installed)")
    if args.only:
        configs = [tuple(item.split("/")) for item in args.only]
    reference, prompt, size, steps = cases.reference_image(), "a character walking through a misty forest", \
        args.size, args.steps
    print(f"{args.scale} size, random weights, {device} {args.dtype}, {size}x{size}, {steps} steps")
    for mode, weight_format in configs:
        # built on the device (fast), then on the CPU for the offloading modes
        flux, encoders, adapter = full_size_parts(args.scale, device, dtype, tokenizer_dirs)
        if mode != "resident":
            for module in (flux.transformer, flux.vae, flux.text_encoder, flux.text_encoder_2, encoders.siglip,
                           encoders.dinov2, adapter.projector):
                module.to("cpu")
        pipe = assemble_pipeline(flux, encoders, adapter, device, dtype, mode, weight_format)
        pipe.generate(reference, prompt, width=size, height=size, seed=0, steps=2)      # warm kernels and caches
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # a new seed each run: the reference and prompt caches hold, as in a user's reruns
        seeds = iter(range(1, 100))
        seconds = timed(lambda: pipe.generate(reference, prompt, width=size, height=size, seed=next(seeds),
                                              steps=steps), repeat=args.repeat)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"
        print(f"  {mode:>14} {weight_format:>10}: {seconds:.2f} s per image, peak VRAM {peak}")
        if code is not None and (mode, weight_format) == ("resident", "dtype"):
            theirs, restore = reference_pipeline(code, flux, encoders, adapter)

            def run_reference(seed):
                return theirs(prompt=prompt, num_inference_steps=steps, guidance_scale=3.5, width=size, height=size,
                              subject_image=reference, subject_scale=0.9,
                              generator=torch.Generator("cpu").manual_seed(seed)).images
            run_reference(0)
            seconds_reference = timed(lambda: run_reference(1), repeat=args.repeat)
            print(f"  {'reference':>25}: {seconds_reference:.2f} s per image (ours {seconds / seconds_reference:.2f}x "
                  "its time)")
            restore()
            del theirs
        del pipe, flux, encoders, adapter
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _comfy_tokenizer_dirs():
    import instantcharacter_models as tiny

    return tiny.comfy_tokenizer_dirs()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-size", action="store_true", help="released sizes, random weights")
    parser.add_argument("--scale", default="full", choices=("full", "tiny"), help="with --full-size: tiny checks the code")
    parser.add_argument("--reference", type=Path, help="a checkout of Tencent/InstantCharacter, to time it too")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", nargs="+", metavar="MODE/FORMAT", help="e.g. resident/dtype model_offload/nf4")
    parser.add_argument("--tokenizers", nargs=2, type=Path, metavar=("CLIP_DIR", "T5_DIR"),
                        help="default: ComfyUI's copies under .comfyui/ComfyUI/comfy")
    args = parser.parse_args()
    full_size(args) if args.full_size else cpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
