#!/usr/bin/env python3
"""What the pack's cloud nodes add on top of the provider's own processing time.

Boots a real ComfyUI with the pack (scripts/setup.sh must have run), points the cloud nodes at the
local provider emulators (tests/emulators) with a fixed processing delay, and prints:

1. overhead per job = node wall time (the node's own timings.total) − the emulator's processing
   delay: median and p95 per provider (target ≤ 0.25 s);
2. the wall time of one prompt with four cloud nodes ÷ a prompt with one (target ≤ 1.25: they run
   at the same time);
3. reference uploads over 10 reruns with new seeds, per provider (target 1).

Run it with ComfyUI's venv python (it has aiohttp and Pillow):

    .comfyui/venv/bin/python benchmarks/cloud_overhead.py [--jobs 20] [--delay 2.0]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

from PIL import Image  # noqa: E402

from cloud_helpers import TEST_KEYS  # noqa: E402
from comfyui_server import ComfyUIServer  # noqa: E402
from emulators.fal import FalEmulator  # noqa: E402
from emulators.segmind import SegmindEmulator  # noqa: E402
from emulators.wavespeed import WaveSpeedEmulator  # noqa: E402

NODES = {
    "wavespeed": ("CharIDWaveSpeedInstantCharacter", {"steps": 28, "guidance": 3.5, "strength": 1.0,
                                                      "api_version": "v3", "enable_safety_checker": True}),
    "fal": ("CharIDFalInstantCharacter", {"steps": 28, "guidance": 3.5, "strength": 1.0, "image_size": "custom",
                                          "output_format": "jpeg", "enable_safety_checker": True, "sync_mode": False}),
    "segmind-v2": ("CharIDSegmindInstantID", {"steps": 10, "guidance": 5.0, "strength": 0.8, "api_version": "v2",
                                              "style": "(No style)", "custom_style": "", "adapter_strength": 0.8,
                                              "enhance_face_region": True}),
    "segmind-v1": ("CharIDSegmindInstantID", {"steps": 10, "guidance": 5.0, "strength": 0.8, "api_version": "v1",
                                              "style": "(No style)", "custom_style": "", "adapter_strength": 0.8,
                                              "enhance_face_region": True}),
}


def prompt_for(reference: str, providers: list[str], seed: int) -> dict:
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": reference}}}
    for index, provider in enumerate(providers, 2):
        class_type, options = NODES[provider]
        prompt[str(index)] = {"class_type": class_type, "inputs": {
            "reference": ["1", 0], "prompt": "a knight in a misty forest", "negative_prompt": "", "width": 512,
            "height": 512, "seed": seed, "num_images": 1, **options}}
        prompt[f"{index}i"] = {"class_type": "PreviewAny", "inputs": {"source": [str(index), 1]}}
    return prompt


def run(server: ComfyUIServer, prompt: dict) -> tuple[float, list[dict]]:
    """→ (prompt wall time from ComfyUI's own start/success timestamps, info of every node)."""
    entry = server.run(prompt)
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(json.dumps(entry["status"])[:2000])
    stamps = {kind: data["timestamp"] for kind, data in entry["status"]["messages"]}
    infos = [json.loads(output["text"][0]) for output in entry["outputs"].values() if "text" in output]
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0, infos


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per provider for the overhead figures")
    parser.add_argument("--delay", type=float, default=2.0, help="emulated provider processing time, seconds")
    args = parser.parse_args()

    emulators = {
        "wavespeed": WaveSpeedEmulator(TEST_KEYS["WAVESPEED_API_KEY"]).start(),
        "fal": FalEmulator(TEST_KEYS["FAL_KEY"]).start(),
        "segmind": SegmindEmulator(TEST_KEYS["SEGMIND_API_KEY"]).start(),
    }
    for emulator in emulators.values():
        emulator.processing_s = args.delay
    env = {
        "WAVESPEED_BASE_URL": emulators["wavespeed"].url, "FAL_QUEUE_URL": emulators["fal"].queue_url,
        "FAL_REST_URL": emulators["fal"].rest_url, "SEGMIND_BASE_URL": emulators["segmind"].url,
        **TEST_KEYS,
    }
    base = Path(tempfile.mkdtemp(prefix="charid-cloud-bench-"))
    server = ComfyUIServer(base, env=env).start()
    try:
        buffer = io.BytesIO()
        Image.new("RGB", (512, 512), (200, 40, 60)).save(buffer, "PNG")
        reference = server.upload_image(buffer.getvalue(), "bench_reference.png")
        seed = iter(range(1, 10**6))

        print(f"provider processing delay: {args.delay:.2f} s; {args.jobs} jobs per provider; ComfyUI at {server.url}")
        print("\n1. overhead per job (node wall time − provider processing time)")
        for provider in NODES:
            overheads = []
            for _ in range(args.jobs):
                _, [info] = run(server, prompt_for(reference, [provider], next(seed)))
                overheads.append(info["timings"]["total"] - args.delay)
            print(f"   {provider:11s} median {statistics.median(overheads):.3f} s   p95 {percentile(overheads, 0.95):.3f} s"
                  f"   first run {overheads[0]:.3f} s   (target ≤ 0.25 s)")

        print("\n2. four cloud nodes in one prompt vs one")
        single, four = [], []
        for _ in range(3):
            single.append(run(server, prompt_for(reference, ["wavespeed"], next(seed)))[0])
            four.append(run(server, prompt_for(reference, ["wavespeed", "fal", "segmind-v2", "segmind-v1"],
                                               next(seed)))[0])
        ratio = statistics.median(four) / statistics.median(single)
        print(f"   one node {statistics.median(single):.2f} s, four nodes {statistics.median(four):.2f} s: "
              f"ratio {ratio:.2f} (target ≤ 1.25)")

        print("\n3. reference uploads over 10 reruns with new seeds")
        for emulator in emulators.values():
            emulator.processing_s = 0.1
        fresh = Image.new("RGB", (300, 400), (20, 120, 220))
        buffer = io.BytesIO()
        fresh.save(buffer, "PNG")
        reference = server.upload_image(buffer.getvalue(), "bench_reference_2.png")
        before = {name: emulator.counts["upload"] for name, emulator in emulators.items()}
        for _ in range(10):
            run(server, prompt_for(reference, ["wavespeed", "fal"], next(seed)))
        for name in ("wavespeed", "fal"):
            print(f"   {name:11s} {emulators[name].counts['upload'] - before[name]} upload(s) (target 1)")
        print("   segmind     0 uploads (the face image travels inline with each request, by Segmind's API)")
    finally:
        server.stop()
        for emulator in emulators.values():
            emulator.stop()
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"\n(benchmark took {time.monotonic() - started:.0f} s)")
    sys.exit(code)
