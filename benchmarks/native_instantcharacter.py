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

Needs the ComfyUI of COMFYUI_DIR (default .comfyui) importable in this process.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from timing import timed  # noqa: E402  (benchmarks/, the script's own folder)


def import_comfyui():
    from comfyui_server import comfyui_dir

    path = str(comfyui_dir() / "ComfyUI")
    if path not in sys.path:
        sys.path.append(path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_detection  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.utils  # noqa: F401

    return comfy


def import_native():
    """nodes/native_instantcharacter.py inside a package holding nodes/ and pipelines/, as ComfyUI
    imports the pack (without registering every node)."""
    for name, folder in (("charid_native_bench", REPO_ROOT), ("charid_native_bench.nodes", REPO_ROOT / "nodes")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module("charid_native_bench.nodes.native_instantcharacter")


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
    from diffusers import FluxPipeline

    import instantcharacter_fidelity as cases
    import instantcharacter_models as tiny
    from pipelines.local.instantcharacter.loading import FluxFiles, InstantCharacterFiles, build_pipeline

    comfy = import_comfyui()
    native = import_native()
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
