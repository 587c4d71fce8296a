"""The LCM-LoRA for SDXL (latent-consistency/lcm-lora-sdxl), which the InstantID demo switches on for
its fast mode, applied to the UNet as adapters (pipelines/local/lora.py) only for calls that ask for
it. Its file names the UNet's diffusers modules with underscores (`lora_unet_down_blocks_0_…`, as
most ComfyUI copies have it); the dotted diffusers/PEFT spelling (`unet.down_blocks.0.…`) is read
too. Layers on the text encoders, or names in the original SDXL layout (`input_blocks_…`), are
refused by name.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from ..lora import LoRALayer, layers_applied, read_layers
from ..weights import ModelFileError


@dataclass
class SDXLLoRA:
    name: str
    unet: dict[str, LoRALayer] = field(default_factory=dict)       # UNet module path → layer

    @contextlib.contextmanager
    def applied_to(self, unet, strength: float = 1.0):
        with layers_applied(self.name, [(unet, self.unet)], strength):
            yield


def read_sdxl_lora(path: Path | str, unet) -> SDXLLoRA:
    path = Path(path)
    modules = {name.replace(".", "_"): name for name, _ in unet.named_modules() if name}
    lora = SDXLLoRA(path.name)
    for base, layer in read_layers(path).items():
        if base.startswith("unet."):
            target = base[len("unet."):]
        elif base.startswith("lora_unet_") and base[len("lora_unet_"):] in modules:
            target = modules[base[len("lora_unet_"):]]
        elif base.startswith(("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks")):
            raise ModelFileError(f"LoRA {path.name}: {base!r} uses the original SDXL layer names; the fast mode reads "
                                 "the LCM-LoRA as released (diffusers layer names)")
        elif base.startswith(("lora_te", "text_encoder")):
            raise ModelFileError(f"LoRA {path.name}: {base!r} is a text-encoder layer; the fast mode applies a LoRA "
                                 "to the UNet only (the LCM-LoRA has no other)")
        else:
            raise ModelFileError(f"LoRA {path.name}: cannot place {base!r} on this SDXL UNet")
        lora.unet[target] = layer
    if not lora.unet:
        raise ModelFileError(f"LoRA {path.name}: holds no layers")
    return lora
