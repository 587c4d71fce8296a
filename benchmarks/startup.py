#!/usr/bin/env python3
"""How much the pack adds to ComfyUI's start-up.

Two figures, both from ComfyUI's own code path for loading a custom node pack:

1. `comfyui_reported_s`: the "Import times for custom nodes" line ComfyUI prints at start-up
   (`main.py --quick-test-for-ci`, a real start that exits once every node is loaded). ComfyUI
   rounds it to 0.1 s.
2. `load_custom_node_s`: the same call ComfyUI times (`nodes.load_custom_node`), run in a fresh
   interpreter after ComfyUI's own modules are imported, timed with perf_counter — the precise
   version of figure 1. The probe also lists heavy modules the pack pulled in (diffusers,
   transformers, model code); that list must be empty.

Target: ≤ 0.2 s. Usage (any Python; it runs ComfyUI's venv itself):

    python benchmarks/startup.py [--runs 5] [--json]

environment: COMFYUI_DIR (default <repo>/.comfyui, made by scripts/setup.sh)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-character-identity"
HEAVY_PREFIXES = ("diffusers", "transformers", "accelerate", "onnxruntime", "insightface")

# Runs inside ComfyUI's venv with ComfyUI's folder as the working directory.
PROBE = r"""
import asyncio, json, sys, time
base_dir, pack_path = sys.argv[1], sys.argv[2]
sys.argv = ["main.py", "--cpu", "--base-directory", base_dir]
sys.path.insert(0, ".")
import comfy.options
comfy.options.enable_args_parsing()
import nodes
# Everything ComfyUI loads before it reaches custom packs (torch, comfy.*, the built-in nodes).
asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
before = set(sys.modules)
started = time.perf_counter()
ok = asyncio.run(nodes.load_custom_node(pack_path, module_parent="custom_nodes"))
elapsed = time.perf_counter() - started
added = sorted(set(sys.modules) - before)
print(json.dumps({"ok": ok, "seconds": elapsed, "added_modules": added}))
"""


def comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR", REPO_ROOT / ".comfyui")).resolve()


def make_base_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="charid-startup-"))
    (base / "custom_nodes").mkdir()
    (base / "user").mkdir()
    (base / "custom_nodes" / PACK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    return base


def probe_load(base: Path) -> dict:
    """One fresh interpreter: ComfyUI's imports, then ComfyUI's load_custom_node on the pack."""
    comfy = comfyui_dir()
    pack_path = base / "custom_nodes" / PACK_NAME
    done = subprocess.run(
        [str(comfy / "venv/bin/python"), "-c", PROBE, str(base), str(pack_path)],
        cwd=comfy / "ComfyUI", capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"probe failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if not result["ok"]:
        raise RuntimeError(f"ComfyUI could not load the pack:\n{done.stderr[-3000:]}")
    result["heavy_modules"] = [m for m in result["added_modules"] if m.split(".")[0] in HEAVY_PREFIXES]
    return result


def comfyui_reported(base: Path) -> float:
    """A real ComfyUI start (--quick-test-for-ci); returns the pack's 'Import times' figure."""
    comfy = comfyui_dir()
    done = subprocess.run(
        [str(comfy / "venv/bin/python"), "main.py", "--cpu", "--quick-test-for-ci", "--disable-api-nodes",
         "--base-directory", str(base), "--database-url", "sqlite:///:memory:"],
        cwd=comfy / "ComfyUI", capture_output=True, text=True, timeout=300,
    )
    log = done.stdout + done.stderr
    match = re.search(r"^\s*([\d.]+) seconds( \(IMPORT FAILED\))?: .*" + re.escape(PACK_NAME) + r"\s*$", log, re.M)
    if not match:
        raise RuntimeError("ComfyUI printed no import time for the pack:\n" + log[-3000:])
    if match.group(2):
        raise RuntimeError("ComfyUI reports IMPORT FAILED for the pack:\n" + log[-3000:])
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    base = make_base_dir()
    try:
        probes = [probe_load(base) for _ in range(args.runs)]
        reported = [comfyui_reported(base) for _ in range(max(1, min(args.runs, 3)))]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    seconds = [p["seconds"] for p in probes]
    summary = {
        "runs": args.runs,
        "load_custom_node_s": {"median": statistics.median(seconds), "max": max(seconds), "min": min(seconds)},
        "comfyui_reported_s": {"median": statistics.median(reported), "values": reported},
        "modules_added": len(probes[-1]["added_modules"]),
        "heavy_modules": probes[-1]["heavy_modules"],
        "loaded": all(p["ok"] for p in probes),
        "target_s": 0.2,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        load = summary["load_custom_node_s"]
        print(f"pack import time, as ComfyUI reports it ('Import times for custom nodes'): "
              f"{summary['comfyui_reported_s']['median']:.1f} s  (runs: {reported})")
        print(f"pack import time, ComfyUI's load_custom_node timed precisely: median {load['median'] * 1000:.1f} ms, "
              f"min {load['min'] * 1000:.1f} ms, max {load['max'] * 1000:.1f} ms over {args.runs} fresh starts")
        print(f"modules the pack adds: {summary['modules_added']}; heavy ones: {summary['heavy_modules'] or 'none'}")
        print(f"target ≤ {summary['target_s']} s: {'met' if load['median'] <= summary['target_s'] else 'NOT met'}")
    return 0 if summary["loaded"] else 1


if __name__ == "__main__":
    sys.exit(main())
