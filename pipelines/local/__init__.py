"""Local inference backends (torch, diffusers, transformers). Nothing here imports ComfyUI, and
importing this package imports nothing heavy: each pipeline imports its libraries when it loads."""
