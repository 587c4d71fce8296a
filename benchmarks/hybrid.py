#!/usr/bin/env python3
"""A hybrid prompt — one local node and one cloud node — against each of them alone.

Boots a real ComfyUI with the pack (scripts/setup.sh must have run) and the tiny test models in its
model folders (local InstantID on the CPU, or real models when --models points at a models folder
and a GPU is there), points the cloud node at the fal emulator with a fixed processing delay, and
prints the wall time of the prompt with both nodes against the longer of the two run alone
(target ≤ 1.25: the cloud node polls while the local node computes in its worker thread).

    .comfyui/venv/bin/python benchmarks/hybrid.py [--delay 4] [--steps 30] [--repeat 3]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

import face_models  # noqa: E402
import instantid_models  # noqa: E402
from cloud_helpers import TEST_KEYS  # noqa: E402
from comfyui_server import ComfyUIServer  # noqa: E402
from emulators.fal import FalEmulator  # noqa: E402


def wall_time(server: ComfyUIServer, prompt: dict) -> float:
    """Seconds from ComfyUI's own execution start to success."""
    entry = server.run(prompt, timeout=900)
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(json.dumps(entry["status"])[:2000])
    stamps = {kind: data["timestamp"] for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def prompt_for(names: dict, reference: str, parts: tuple[str, ...], seed: int, steps: int) -> dict:
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": reference}}}
    if "local" in parts:
        prompt.update({
            "9": {"class_type": "CharIDFaceModelsLoader", "inputs": {"antelopev2": names["antelopev2"],
                                                                     "provider": "auto"}},
            "10": {"class_type": "CharIDInstantIDLoader", "inputs": {
                "sdxl_model": names["checkpoint"], "identitynet": names["identitynet_file"],
                "adapter": names["adapter"], "face_models": ["9", 0], "lcm_lora": "none",
                "memory_mode": "resident", "dtype": "auto"}},
            "2": {"class_type": "CharIDInstantIDLocal", "inputs": {
                "reference": ["1", 0], "prompt": "portrait of the person", "negative_prompt": "", "width": 256,
                "height": 256, "seed": seed, "steps": steps, "guidance": 5.0, "num_images": 1, "strength": 0.8,
                "pipeline": ["10", 0], "style": "(No style)", "adapter_strength": 0.8, "enhance_face_region": True}},
            "2i": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}})
    if "cloud" in parts:
        prompt.update({
            "3": {"class_type": "CharIDFalInstantCharacter", "inputs": {
                "reference": ["1", 0], "prompt": "full-body shot of the person", "negative_prompt": "",
                "width": 512, "height": 512, "seed": seed, "steps": 28, "guidance": 3.5, "num_images": 1,
                "strength": 1.0, "image_size": "custom", "output_format": "jpeg", "enable_safety_checker": True,
                "sync_mode": False}},
            "3i": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}})
    return prompt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=4.0, help="emulated fal processing time, seconds")
    parser.add_argument("--steps", type=int, default=30, help="local denoising steps (tiny models: ~0.1 s each)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    fal = FalEmulator(TEST_KEYS["FAL_KEY"]).start()
    fal.processing_s = args.delay
    base = Path(tempfile.mkdtemp(prefix="charid-hybrid-bench-"))
    files = instantid_models.build_tiny_instantid(base / "tiny")
    antelopev2 = face_models.antelopev2(base / "tiny" / "antelopev2")
    names = instantid_models.install_into_models(files, antelopev2, base / "models")
    env = {"FAL_QUEUE_URL": fal.queue_url, "FAL_REST_URL": fal.rest_url, "FAL_KEY": TEST_KEYS["FAL_KEY"],
           "HF_HUB_OFFLINE": "1"}
    server = ComfyUIServer(base, env=env).start()
    try:
        buffer = io.BytesIO()
        face_models.scene((120, 50, 230, 170), size=(320, 240)).save(buffer, "PNG")
        reference = server.upload_image(buffer.getvalue(), "hybrid_reference.png")
        seeds = iter(range(1, 10**6))
        wall_time(server, prompt_for(names, reference, ("local",), next(seeds), 2))      # load and warm the models
        local, cloud, both = [], [], []
        for _ in range(args.repeat):
            local.append(wall_time(server, prompt_for(names, reference, ("local",), next(seeds), args.steps)))
            cloud.append(wall_time(server, prompt_for(names, reference, ("cloud",), next(seeds), args.steps)))
            both.append(wall_time(server, prompt_for(names, reference, ("local", "cloud"), next(seeds), args.steps)))
        local_s, cloud_s, both_s = (statistics.median(v) for v in (local, cloud, both))
        print(f"local InstantID alone (tiny models, CPU, 256², {args.steps} steps): {local_s:.2f} s")
        print(f"cloud fal InstantCharacter alone (emulator, {args.delay:.1f} s processing): {cloud_s:.2f} s")
        print(f"both in one prompt: {both_s:.2f} s — {both_s / max(local_s, cloud_s):.2f}x the longer one "
              f"(target ≤ 1.25; run one after the other they take {local_s + cloud_s:.2f} s)")
    finally:
        server.stop()
        fal.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
