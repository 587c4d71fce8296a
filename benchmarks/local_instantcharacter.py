#!/usr/bin/env python3
"""Local InstantCharacter: what it costs, printed (no asserts).

CPU (default; tiny random-weight models built by tests/instantcharacter_models.py):
1. milliseconds per step, and the adapter's overhead over plain FLUX (diffusers' own FluxPipeline
   with the same components, size, steps and encoded prompt);
2. what a new reference costs (image encoders, and the projector at every step);
3. encoder calls per rerun with a new seed (target: none), and the time of that rerun.

The GPU figures (full-size weights, 1024², 28 steps, each memory mode) are not measured yet: no
GPU has been lent to this project's sessions so far.

    .comfyui/venv/bin/python benchmarks/local_instantcharacter.py
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


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    cpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
