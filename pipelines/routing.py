"""Local or cloud: which branch a route runs, from the facts the host gathers (which local model
files are missing, the compute device, its free memory). No ComfyUI here: the node gathers the facts."""
from __future__ import annotations

from dataclasses import dataclass

PREFERENCES = ("auto", "local", "cloud")


@dataclass(frozen=True)
class Route:
    branch: str          # "local" or "cloud"
    reason: str


def choose_branch(prefer: str, min_free_vram_gb: float, missing_files: list[str], device: str,
                  free_vram_gb: float | None) -> Route:
    """`device`: "cpu" or a GPU's name; `free_vram_gb`: its free memory (None on the CPU)."""
    if prefer not in PREFERENCES:
        raise ValueError(f"prefer = {prefer!r} is not one of {', '.join(PREFERENCES)}")
    if prefer != "auto":
        return Route(prefer, f"forced: prefer = {prefer}")
    if missing_files:
        return Route("cloud", "local model files missing — " + "; ".join(missing_files))
    if device == "cpu" or free_vram_gb is None:
        return Route("cloud", "ComfyUI runs on the CPU (no GPU for the local branch)")
    if free_vram_gb < min_free_vram_gb:
        return Route("cloud", f"{free_vram_gb:.1f} GB of VRAM free on {device}, below the {min_free_vram_gb:g} GB "
                              "asked for")
    return Route("local", f"all local model files present and {free_vram_gb:.1f} GB of VRAM free on {device} "
                          f"(≥ {min_free_vram_gb:g} GB)")
