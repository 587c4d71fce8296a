#!/usr/bin/env python3
"""Local InstantID: what it costs, printed (no asserts).

Tiny models (default; built by tests/instantid_models.py, CPU):
1. seconds per image and per step, and — with --reference — the reference pipeline
   (instantX-research/InstantID, the demo's full pipeline) on the same files, size, steps and face;
2. face analysis of a photo at the demo's size (tiny ONNX models), first run and cached;
3. model calls per rerun with a new seed (target: no text encoder, no resampler run).

Full size (--full-size; meant for a GPU): SDXL, the IdentityNet and the face adapter at their
released sizes with random weights, 1024², 30 steps: seconds per image and peak VRAM for each memory
mode, and — with --reference — the reference pipeline in the same run.

    .comfyui/venv/bin/python benchmarks/local_instantid.py [--reference /path/to/InstantID]
    python benchmarks/local_instantid.py --full-size --device cuda --reference /path/to/InstantID
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from timing import timed  # noqa: E402  (benchmarks/, the script's own folder)


def reference_pipeline(reference_repo: Path, models, dtype, device, resampler_size: dict):
    """The reference's own pipeline class over the same modules (its processors installed by its own
    set_ip_adapter; weights copied from ours), as scripts/record_instantid_reference.py runs it."""
    import copy

    import torch

    sys.path.insert(0, str(reference_repo))
    import diffusers.models.controlnets.multicontrolnet as moved
    sys.modules["diffusers.pipelines.controlnet.multicontrolnet"] = moved
    from diffusers import EulerDiscreteScheduler
    from ip_adapter.resampler import Resampler
    from pipeline_stable_diffusion_xl_instantid_full import StableDiffusionXLInstantIDPipeline

    ours = models
    unet = copy.deepcopy(ours.models.unet)          # the reference installs its own processors
    pipe = StableDiffusionXLInstantIDPipeline(
        vae=ours.models.vae, text_encoder=ours.models.text_encoder, text_encoder_2=ours.models.text_encoder_2,
        tokenizer=ours.models.tokenizer, tokenizer_2=ours.models.tokenizer, unet=unet,
        controlnet=ours.models.controlnet, scheduler=EulerDiscreteScheduler.from_config(ours.models.scheduler_config))
    resampler = Resampler(dim=resampler_size["dim"], depth=resampler_size["depth"], dim_head=64,
                          heads=resampler_size["heads"], num_queries=resampler_size["num_queries"], embedding_dim=512,
                          output_dim=unet.config.cross_attention_dim, ff_mult=4).eval()
    resampler.load_state_dict(ours.adapter.resampler.state_dict())
    pipe.image_proj_model = resampler.to(device, dtype)
    pipe.image_proj_model_in_features = 512
    state = {"ip_adapter": _processor_state(ours)}
    real_load = torch.load
    torch.load = lambda *_, **__: state
    try:
        pipe.set_ip_adapter("ours", num_tokens=resampler_size["num_queries"], scale=0.8)
    finally:
        torch.load = real_load
    return pipe.to(device)


def _processor_state(pipe) -> dict:
    import torch

    processors = [pipe.adapter.processors[name] for name in pipe.models.unet.attn_processors]
    layers = torch.nn.ModuleList([p if isinstance(p, torch.nn.Module) else torch.nn.Identity() for p in processors])
    return layers.state_dict()


def tiny(args) -> None:
    import torch

    import face_models
    import instantid_fidelity as cases
    import instantid_models as models
    from instantcharacter_models import comfy_tokenizer_dirs
    from pipelines.local.instantid.conditioning import FaceConditioning, demo_resize
    from pipelines.local.instantid.loading import InstantIDFiles, build_pipeline

    root = Path(tempfile.mkdtemp(prefix="bench-instantid-"))
    files = models.build_tiny_instantid(root)
    antelopev2 = face_models.antelopev2(root / "antelopev2")
    pipe = build_pipeline(InstantIDFiles(files.checkpoint, files.controlnet_file, files.adapter,
                                         comfy_tokenizer_dirs()[0], antelopev2=antelopev2))
    face = FaceConditioning(cases.face_embedding(), cases.KPS, cases.CANVAS, cases.BBOX).on_canvas(256, 256)
    prompt, negative, steps = "a man in a garden, (detailed:1.2)", "lowres", 20
    run = dict(seed=1, steps=steps, guidance=5.0, enhance_face_region=True, output="latent")
    pipe.generate(face, prompt, negative, **run)                             # warm caches and kernels
    ours = timed(lambda: pipe.generate(face, prompt, negative, **run))
    print(f"CPU, tiny models ({torch.get_num_threads()} threads), 256x256, {steps} steps, guidance 5, face region")
    line = f"1. {ours:.2f} s per image, {ours / steps * 1000:.1f} ms per step"
    if args.reference:
        r = models.RESAMPLER
        reference = reference_pipeline(args.reference, pipe, torch.float32, "cpu",
                                       dict(dim=r["dim"], depth=r["depth"], heads=r["dim"] // 64,
                                            num_queries=r["num_queries"]))
        theirs = timed(lambda: _run_reference(reference, face, prompt, negative, steps, 256, 256))
        line += f"; the reference {theirs:.2f} s per image: ours takes {ours / theirs:.2f}x its time"
    print(line)

    photo = demo_resize(face_models.scene((700, 450, 760, 510), size=(1600, 1200)))
    fresh = build_pipeline(InstantIDFiles(files.checkpoint, files.controlnet_file, files.adapter,
                                          comfy_tokenizer_dirs()[0], antelopev2=antelopev2))
    first = timed(lambda: fresh.faces.analyze(photo), repeat=1)
    cached = timed(lambda: fresh.faces.analyze(photo.copy()))
    found = len(fresh.faces.analyze(photo))
    print(f"2. face analysis of a {photo.width}x{photo.height} photo ({found} faces found by the tiny detector, each "
          f"embedded): {first * 1000:.0f} ms, then {cached * 1000:.1f} ms from the cache (same pixels)")

    before = dict(vars(pipe.counters))
    rerun = timed(lambda: pipe.generate(face, prompt, negative, **{**run, "seed": 2}), repeat=1)
    calls = {key: value - before[key] for key, value in vars(pipe.counters).items()}
    print(f"3. rerun with a new seed: text encoders {calls['text_encoders']}, resampler {calls['resampler']} calls "
          f"(target 0, 0); controlnet {calls['controlnet']}, unet {calls['unet']} calls; {rerun:.2f} s")


def _run_reference(pipe, face, prompt, negative, steps, width, height, output_type="latent"):
    import numpy as np
    import torch
    from PIL import Image

    from pipelines.local.instantid.conditioning import keypoint_image

    mask = np.zeros([height, width, 3])
    x1, y1, x2, y2 = (int(v) for v in face.bbox)
    mask[max(y1, 0):y2, max(x1, 0):x2] = 255
    return pipe(prompt=prompt, negative_prompt=negative, image_embeds=face.embedding, image=keypoint_image(face),
                control_mask=Image.fromarray(mask.astype(np.uint8)), controlnet_conditioning_scale=0.8,
                num_inference_steps=steps, guidance_scale=5.0, height=height, width=width,
                generator=torch.Generator("cpu").manual_seed(1), output_type=output_type).images


def full_size(args) -> None:
    """Released sizes, random weights (nothing to download), straight onto the device."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    import instantid_fidelity as cases
    from instantcharacter_models import comfy_tokenizer_dirs
    from pipelines.local.adapter_files import ResamplerSize
    from pipelines.local.instantid.adapter import (FaceAttnProcessor, FaceResampler, build_face_adapter,
                                                   install_face_adapter)
    from pipelines.local.instantid.conditioning import FaceConditioning
    from pipelines.local.instantid.loading import load_sdxl_tokenizers, shipped_config
    from pipelines.local.instantid.pipeline import InstantIDPipeline, SDXLModels
    from pipelines.local.memory import MEMORY_MODES, apply_memory_mode

    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    size, steps = args.size, args.steps

    def build():
        torch.manual_seed(0)
        with torch.device("cpu"):
            unet = UNet2DConditionModel(**shipped_config("sdxl_unet.json")).to(dtype).eval()
            controlnet = ControlNetModel(**shipped_config("identitynet.json")).to(dtype).eval()
            vae = AutoencoderKL(**shipped_config("sdxl_vae.json")).to(dtype).eval()
            first = CLIPTextModel(CLIPTextConfig(**shipped_config("sdxl_text_encoder.json"))).to(dtype).eval()
            second = CLIPTextModelWithProjection(CLIPTextConfig(**shipped_config("sdxl_text_encoder_2.json"))
                                                 ).to(dtype).eval()
            resampler = FaceResampler(ResamplerSize(1280, 4, 20, 16, 512, 2048, 5120))
            state = {f"image_proj.{k}": v for k, v in resampler.state_dict().items()}
            for index, name in enumerate(unet.attn_processors):
                if name.endswith("attn2.processor"):
                    hidden = unet.get_submodule(name[: -len(".processor")]).to_q.out_features
                    processor = FaceAttnProcessor(hidden, 2048)
                    state.update({f"ip_adapter.{index}.{k}": v for k, v in processor.state_dict().items()})
        adapter = build_face_adapter(state, unet, dtype)
        tokenizer, _ = load_sdxl_tokenizers(args.tokenizer or comfy_tokenizer_dirs()[0])
        return SDXLModels(unet, controlnet, vae, first, second, tokenizer, shipped_config("sdxl_scheduler.json")), adapter

    face = FaceConditioning(cases.face_embedding() * 20, cases.KPS, cases.CANVAS, cases.BBOX).on_canvas(size, size)
    prompt, negative = "a man in a garden, film photo", "lowres, blurry"
    print(f"full size, random weights, {device} {args.dtype}, {size}x{size}, {steps} steps, guidance 5, face region")
    modes = [args.memory_mode] if args.memory_mode else [m for m in MEMORY_MODES if m != "sequential_offload"]
    for mode in modes:
        models, adapter = build()
        install_face_adapter(models.unet, adapter)
        components = [models.unet, models.controlnet, models.vae, models.text_encoder, models.text_encoder_2,
                      adapter.resampler]
        placement = apply_memory_mode(mode, device, components, streamed=(models.unet, models.controlnet))
        pipe = InstantIDPipeline(models=models, adapter=adapter, device=device, dtype=dtype, placement=placement)
        pipe.generate(face, prompt, negative, seed=0, steps=2)              # warm kernels and caches
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = timed(lambda: pipe.generate(face, prompt, negative, seed=1, steps=steps), repeat=args.repeat)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        print(f"  {mode:>14}: {seconds:.2f} s per image, peak {peak:.1f} GiB")
        if args.reference and mode == "resident":
            reference = reference_pipeline(args.reference, pipe, dtype, device,
                                           dict(dim=1280, depth=4, heads=20, num_queries=16))
            _run_reference(reference, face, prompt, negative, 2, size, size, "pil")
            theirs = timed(lambda: _run_reference(reference, face, prompt, negative, steps, size, size, "pil"),
                           repeat=args.repeat)
            print(f"  {'reference':>14}: {theirs:.2f} s per image (ours {seconds / theirs:.2f}x its time)")
            del reference
        del pipe, models, adapter
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="a checkout of instantX-research/InstantID, to time it too")
    parser.add_argument("--full-size", action="store_true", help="released sizes, random weights")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-mode", help="one memory mode only (default: resident, model and group offload)")
    parser.add_argument("--tokenizer", type=Path, help="CLIP tokenizer folder (default: ComfyUI's sd1_tokenizer)")
    args = parser.parse_args()
    full_size(args) if args.full_size else tiny(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
