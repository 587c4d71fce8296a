"""Local InstantID: SDXL + IdentityNet + the InstantID face adapter, with antelopev2 face analysis.

Import the submodules directly: they import torch and diffusers."""
