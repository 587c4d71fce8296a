"""Local InstantCharacter: FLUX.1-dev + SigLIP + DINOv2 + the InstantCharacter adapter.

Import the submodules directly (`.pipeline`, `.loading`, ...): they import torch and diffusers."""
