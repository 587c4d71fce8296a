#!/usr/bin/env python3
"""Native InstantID (ComfyUI's own SDXL MODEL with Apply InstantID and the IdentityNet as its
ControlNet) vs the all-in-one pipeline: time per step, printed (no asserts).

CPU (default; the tests' tiny native-InstantID models, fp32): the same face, prompt embeddings, noise,
sigmas and steps on both sides, CFG 5, face region on. Native = ComfyUI's euler sampler in this
process (a CFGGuider, as SamplerCustomAdvanced runs it) on ComfyUI's SDXL loaded from the tiny
single-file checkpoint, patched by nodes/native_instantid.py with the tiny IdentityNet as ComfyUI's
ControlNetLoader loads it; all-in-one = InstantIDPipeline.generate. Also ComfyUI's SDXL without
InstantID (no face attention, no ControlNet), for what InstantID costs natively. The three run in
turns and the fastest turn of each is compared (other jobs on a shared CPU slow some turns). Target:
native ≤ 1.05 × the all-in-one's time per step.

    .comfyui/venv/bin/python benchmarks/native_instantid.py [--size 128] [--steps 8]

Full size (--full-size; meant for a GPU): ComfyUI's SDXL built by its own detection at the released
size with random weights (nothing to download), the IdentityNet (ComfyUI's ControlNet from the
released layout) and the face adapter (an ip-adapter.bin of the released sizes, through the adapter
loader node's code) with random weights, fp16, 1024², 30 steps, CFG 5 through ComfyUI's sampler and
model management: seconds per image and peak VRAM, with and without InstantID. `--scale tiny` runs
the same code at the tests' tiny sizes (a check on the CPU).

    python benchmarks/native_instantid.py --full-size --device cuda

Needs the ComfyUI of COMFYUI_DIR (default .comfyui) importable in this process.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from native_common import import_comfyui, import_native, parse_arguments  # noqa: E402  (benchmarks/)
from timing import timed  # noqa: E402  (benchmarks/, the script's own folder)

PROMPT, NEGATIVE = "a photo of a woman in a garden, film grain", "blurry, lowres"
GUIDANCE, IDENTITY, ADAPTER = 5.0, 0.8, 0.8


def test_face(size: int):
    import instantid_fidelity as cases
    from pipelines.local.instantid.conditioning import FaceConditioning

    return FaceConditioning(cases.face_embedding(), cases.KPS, cases.CANVAS, cases.BBOX).on_canvas(size, size)


def sample(comfy, model, positive, negative, noise, sigmas, seed: int):
    """ComfyUI's euler KSAMPLER over `sigmas` from `noise` (empty latent), CFG 5, through a CFGGuider."""
    import torch

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(GUIDANCE)
    with torch.inference_mode():
        return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.ksampler("euler"), sigmas, seed=seed,
                             disable_pbar=True)


def cpu(args) -> None:
    import torch
    from diffusers import ControlNetModel

    import instantid_models as tiny
    from pipelines.local.instantid.adapter import build_face_adapter
    from pipelines.local.instantid.pipeline import InstantIDPipeline, SDXLModels

    comfy = import_comfyui()
    import comfy.sd                                 # its checkpoint loader (it imports torchaudio: CPU run only)

    native = import_native("native_instantid")
    cpu_device = torch.device("cpu")
    files = tiny.build_native_instantid(Path(tempfile.mkdtemp(prefix="bench-native-instantid-")))

    # the all-in-one pipeline on the same weights (as tests/test_native_instantid.py builds it)
    unet = tiny.native_unet().eval()
    clip_l, clip_g = tiny.native_text_encoders()
    models = SDXLModels(unet=unet, controlnet=ControlNetModel.from_pretrained(files.controlnet_folder).eval(),
                        vae=tiny.vae(), text_encoder=clip_l.eval(), text_encoder_2=clip_g.eval(),
                        tokenizer=tiny.tokenizers()[0], scheduler_config=dict(tiny.scheduler().config))
    pipe = InstantIDPipeline(models=models, adapter=build_face_adapter(torch.load(files.adapter, weights_only=True), unet),
                             device=cpu_device, dtype=torch.float32)

    # ComfyUI's side: its SDXL from the single file, its ControlNet, the adapter loader's code
    model = comfy.sd.load_checkpoint_guess_config(str(files.checkpoint), output_vae=False, output_clip=False)[0]
    control_net = comfy.controlnet.load_controlnet(str(files.controlnet_ldm))
    adapter = native.load_adapter(files.adapter, torch.float32, cpu_device, cpu_device)
    size, steps = args.size, args.steps
    face = test_face(size)

    def all_in_one(seed):
        return pipe.generate(face, PROMPT, NEGATIVE, seed=seed, steps=steps, guidance=GUIDANCE,
                             identity_strength=IDENTITY, adapter_strength=ADAPTER, enhance_face_region=True,
                             output="latent")

    all_in_one(0)                                   # warm the caches (prompt, face tokens) and kernels
    scheduler = pipe.make_scheduler("euler")        # the sigmas generate runs over
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.detach().clone().float()
    start = float(scheduler.init_noise_sigma) / float(sigmas[0])      # its noise × √(σ₀²+1); ComfyUI's × σ₀
    text = pipe.encode_prompt(PROMPT, NEGATIVE)
    shape = {"width": size, "height": size}
    positive = [[text.embeds, {"pooled_output": text.pooled, **shape}]]
    negative = [[text.negative_embeds, {"pooled_output": text.negative_pooled, **shape}]]
    patched, face_positive, face_negative = native.apply_instantid(model, positive, negative, adapter, face, control_net,
                                                                   IDENTITY, ADAPTER, enhance_face_region=True)

    def comfyui(which, pos, neg, seed):
        noise = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(seed)) * start
        return sample(comfy, which, pos, neg, noise, sigmas, seed)

    comfyui(patched, face_positive, face_negative, 0)
    comfyui(model, positive, negative, 0)
    seeds = iter(range(1, 1000))
    native_name = "native (Apply InstantID + IdentityNet)"
    runs = {"all-in-one pipeline": lambda: all_in_one(next(seeds)),
            native_name: lambda: comfyui(patched, face_positive, face_negative, next(seeds)),
            "ComfyUI SDXL without InstantID": lambda: comfyui(model, positive, negative, next(seeds))}
    # in turns, so that other work on a shared CPU slows each about as much; the least-disturbed
    # (fastest) turn of each is compared, the median shown beside it
    load = os.getloadavg()[0]
    times = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, run in runs.items():
            times[name].append(timed(run, repeat=1))
    print(f"CPU, tiny models, fp32 ({torch.get_num_threads()} threads), {size}x{size}, {steps} steps, CFG {GUIDANCE}, "
          f"face region, {args.repeat} turns; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    for name, seconds in times.items():
        print(f"  {name:>38}: {min(seconds) / steps * 1000:8.1f} ms per step fastest, "
              f"{statistics.median(seconds) / steps * 1000:8.1f} median")
    best = {name: min(seconds) for name, seconds in times.items()}
    print(f"  native / all-in-one: {best[native_name] / best['all-in-one pipeline']:.3f} x (target <= 1.05); "
          f"native / without InstantID: {best[native_name] / best['ComfyUI SDXL without InstantID']:.3f} x")


def full_size(args) -> None:
    import gc

    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    import instantid_models as tiny
    from local_instantcharacter import fill_random_

    device = torch.device(args.device)
    comfy = import_comfyui(on_cpu=device.type == "cpu")
    native = import_native("native_instantid")
    import comfy.model_management as mm

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    small = args.scale == "tiny"
    size, steps = args.size, args.steps

    def filled(layout):
        """{key: random tensor on the device, in dtype} for a layout of meta tensors."""
        state = {}
        for key, tensor in layout.items():
            state[key] = torch.empty(tensor.shape, device=device, dtype=dtype)
            fill_random_(key, state[key])
        return state

    # ComfyUI's SDXL as its detection builds it from the released layout (the keys and shapes of a
    # diffusers SDXL UNet made on the meta device, through ComfyUI's own key map)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**tiny.config("sdxl_unet.json", **(tiny.NATIVE_UNET if small else {})))
        identitynet = ControlNetModel(**tiny.config("identitynet.json", **(tiny.NATIVE_CONTROLNET if small else {})))
    key_map = comfy.utils.unet_to_diffusers(tiny.comfy_unet_config(unet))
    layout = {key_map[key]: value for key, value in unet.state_dict().items()}
    unet_config = comfy.model_detection.detect_unet_config(layout, "")
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, layout)
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({}, "")
    base.load_model_weights(filled(layout), "")
    model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=torch.device("cpu"))

    # the IdentityNet in ComfyUI's original ControlNet layout, loaded by ComfyUI's ControlNet loader
    control_net = comfy.controlnet.load_controlnet_state_dict(filled(tiny.ldm_controlnet_state(identitynet)),
                                                              model_options={"dtype": dtype})
    # the face adapter: an ip-adapter.bin of these sizes, read by the adapter loader node's code
    resampler = tiny.NATIVE_RESAMPLER if small else {"dim": 1280, "depth": 4, "num_queries": 16, "embedding_dim": 512}
    state = tiny.face_adapter_state(unet, resampler)
    adapter_file = Path(tempfile.mkdtemp(prefix="bench-native-instantid-")) / "ip-adapter.bin"
    torch.save({part: {k: v.to(dtype) for k, v in tensors.items()} for part, tensors in state.items()}, adapter_file)
    del state, unet, identitynet
    adapter = native.load_adapter(adapter_file, dtype, device, torch.device("cpu"))
    adapter_file.unlink()

    generator = torch.Generator().manual_seed(0)
    context, pooled = unet_config["context_dim"], unet_config["adm_in_channels"] - 6 * 256
    shape = {"width": size, "height": size}
    positive = [[torch.randn(1, 77, context, generator=generator),
                 {"pooled_output": torch.randn(1, pooled, generator=generator), **shape}]]
    negative = [[torch.randn(1, 77, context, generator=generator),
                 {"pooled_output": torch.randn(1, pooled, generator=generator), **shape}]]
    face = test_face(size)
    patched, face_positive, face_negative = native.apply_instantid(model, positive, negative, adapter, face, control_net,
                                                                   IDENTITY, ADAPTER, enhance_face_region=True)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    print(f"{args.scale} size, random weights, {device}, {args.dtype}, {size}x{size}, {steps} steps, CFG {GUIDANCE}, "
          f"face region, ComfyUI's euler sampler")
    for name, (which, pos, neg) in {"native InstantID": (patched, face_positive, face_negative),
                                    "ComfyUI SDXL without InstantID": (model, positive, negative)}.items():
        def run(seed, count=steps):
            noise = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
            return sample(comfy, which, pos, neg, noise, sigmas if count == steps else sigmas[[0, -1]], seed)

        run(0, 1)                                   # load, warm kernels
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seeds = iter(range(1, 100))
        seconds = timed(lambda: run(next(seeds)), repeat=args.repeat)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"
        print(f"  {name:>30}: {seconds:.2f} s per image ({seconds / steps * 1000:.0f} ms per step), peak VRAM {peak}")
        mm.unload_all_models()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    args = parse_arguments(__doc__.split("\n\n")[0], "fp16",
                           {"size": (128, 1024), "steps": (8, 30), "repeat": (5, 2)})
    full_size(args) if args.full_size else cpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
