"""FLUX style LoRAs (e.g. the Ghibli and Makoto Shinkai LoRAs the InstantCharacter reference shows),
applied as adapters for the duration of one generation — never merged into the weights and
subtracted again, which drifts bf16 weights a little more after every run.

Two file layouts are read:
- diffusers / PEFT names: `transformer.<module>.lora_A.weight` / `lora_B.weight` (and
  `text_encoder.<module>…`), optional `<module>.alpha` — what the reference's LoRAs use;
- kohya names on the BFL layout, as most FLUX LoRAs for ComfyUI: `lora_unet_double_blocks_0_img_attn_qkv
  .lora_down.weight` / `.lora_up.weight` / `.alpha` (fused q/k/v split onto diffusers' separate
  projections) and `lora_te1_…` for CLIP-L.

Each layer adds strength × scale × up(down(x)) to the layer's output, where scale is alpha / rank
when the file gives alpha, else 1 (the reference ignores alpha; its LoRAs carry none). A key the
pack cannot place is an error naming it, never silently ignored.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..lora import LoRALayer, layers_applied, read_layers
from ..weights import ModelFileError


@dataclass
class LoRA:
    name: str
    key: tuple = ()        # the file's identity (path, mtime, size): what a cached text encoding depends on
    transformer: dict[str, LoRALayer] = field(default_factory=dict)      # diffusers module path → layer
    text_encoder: dict[str, LoRALayer] = field(default_factory=dict)     # CLIP-L module path → layer


# kohya BFL module → diffusers module(s); a tuple splits a fused projection's rows in that order
_DOUBLE = {
    ("img", "attn_qkv"): ("attn.to_q", "attn.to_k", "attn.to_v"),
    ("img", "attn_proj"): "attn.to_out.0", ("img", "mlp_0"): "ff.net.0.proj", ("img", "mlp_2"): "ff.net.2",
    ("img", "mod_lin"): "norm1.linear",
    ("txt", "attn_qkv"): ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    ("txt", "attn_proj"): "attn.to_add_out", ("txt", "mlp_0"): "ff_context.net.0.proj",
    ("txt", "mlp_2"): "ff_context.net.2", ("txt", "mod_lin"): "norm1_context.linear",
}
_SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": "proj_out",
           "modulation_lin": "norm.linear"}
_CLIP = re.compile(r"text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc[12])$")


def _kohya_target(name: str) -> tuple[str, str | tuple[str, ...]] | None:
    """'double_blocks_3_img_attn_qkv' → ('transformer_blocks.3.', ('attn.to_q', …))."""
    if match := re.fullmatch(r"double_blocks_(\d+)_(img|txt)_(attn_qkv|attn_proj|mlp_0|mlp_2|mod_lin)", name):
        return f"transformer_blocks.{match.group(1)}.", _DOUBLE[(match.group(2), match.group(3))]
    if match := re.fullmatch(r"single_blocks_(\d+)_(linear1|linear2|modulation_lin)", name):
        return f"single_transformer_blocks.{match.group(1)}.", _SINGLE[match.group(2)]
    return None


def _clip_target(name: str) -> str | None:
    if match := _CLIP.fullmatch(name):
        layer, part = match.groups()
        part = part.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
        return f"encoder.layers.{layer}.{part}"
    return None


def read_lora(path: Path | str, inner: int) -> LoRA:
    """Parse a LoRA file for a FLUX transformer of width `inner` (q/k/v splits need it)."""
    path = Path(path)
    lora = LoRA(path.name)
    for base, layer in read_layers(path).items():
        down, up, scale = layer.down, layer.up, layer.scale
        if base.startswith("transformer."):
            lora.transformer[base[len("transformer."):]] = layer
        elif base.startswith("text_encoder."):
            lora.text_encoder[base[len("text_encoder."):].removeprefix("text_model.")] = layer
        elif base.startswith("lora_unet_") and (target := _kohya_target(base[len("lora_unet_"):])):
            prefix, modules = target
            if isinstance(modules, str):
                lora.transformer[prefix + modules] = layer
            else:                                     # a fused projection: its rows split in order
                sizes = [inner] * 3 + ([4 * inner] if len(modules) == 4 else [])
                if up.shape[0] != sum(sizes):
                    raise ModelFileError(f"LoRA {path.name}: {base!r} has {up.shape[0]} outputs; this FLUX "
                                         f"transformer needs {sum(sizes)}")
                for module, rows in zip(modules, torch.split(up, sizes, dim=0)):
                    lora.transformer[prefix + module] = LoRALayer(down, rows, scale)
        elif base.startswith("lora_te1_") and (target := _clip_target(base[len("lora_te1_"):])):
            lora.text_encoder[target] = layer
        else:
            raise ModelFileError(f"LoRA {path.name}: cannot place {base!r} on FLUX.1-dev (only the transformer "
                                 "and CLIP-L are supported)")
    return lora


@contextlib.contextmanager
def lora_applied(transformer: torch.nn.Module, text_encoder: torch.nn.Module, lora: LoRA | None, strength: float):
    """Forward hooks that add each LoRA layer's output for as long as the block runs."""
    if lora is None:
        yield
        return
    with layers_applied(lora.name, [(transformer, lora.transformer), (text_encoder, lora.text_encoder)], strength):
        yield
