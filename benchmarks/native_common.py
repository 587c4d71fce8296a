"""What the two native benchmarks share: ComfyUI's code in this process, the pack's native node module
imported as ComfyUI imports the pack, and the command line (CPU defaults vs --full-size defaults)."""
from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def import_comfyui(on_cpu: bool = True):
    """ComfyUI of COMFYUI_DIR (default .comfyui), importable here; --cpu set before its model
    management reads it."""
    from comfyui_server import comfyui_dir

    path = str(comfyui_dir() / "ComfyUI")
    if path not in sys.path:
        sys.path.append(path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = on_cpu
    import comfy.controlnet  # noqa: F401
    import comfy.model_detection  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.utils  # noqa: F401

    return comfy


def import_native(module: str):
    """nodes/<module>.py inside a package holding nodes/ and pipelines/, as ComfyUI imports the pack
    (without registering every node)."""
    for name, folder in (("charid_native_bench", REPO_ROOT), ("charid_native_bench.nodes", REPO_ROOT / "nodes")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module(f"charid_native_bench.nodes.{module}")


def parse_arguments(description: str, dtype: str, defaults: dict[str, tuple[int, int]]) -> argparse.Namespace:
    """--full-size / --scale / --device / --dtype and --size, --steps, --repeat, whose defaults are
    `defaults[name] = (on the CPU, at full size)`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--full-size", action="store_true", help="released sizes, random weights")
    parser.add_argument("--scale", default="full", choices=("full", "tiny"), help="with --full-size: tiny checks the code")
    parser.add_argument("--device", default="cuda", help="with --full-size")
    parser.add_argument("--dtype", default=dtype, choices=("bf16", "fp16", "fp32"), help="with --full-size")
    for name, (on_cpu, full) in defaults.items():
        parser.add_argument(f"--{name}", type=int, help=f"default {on_cpu} (CPU), {full} (--full-size)")
    args = parser.parse_args()
    for name, (on_cpu, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, full if args.full_size else on_cpu)
    return args
