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
import torch.nn.functional as F

from ..weights import ModelFileError, read_state


@dataclass
class LoRALayer:
    down: torch.Tensor      # [rank, in]
    up: torch.Tensor        # [out, rank]
    scale: float


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
    state = read_state(path, "LoRA")
    lora = LoRA(path.name)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for suffix, role in ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
                             (".lora.up.weight", "up"), (".lora_down.weight", "down"), (".lora_up.weight", "up"),
                             (".alpha", "alpha")):
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[role] = value
                break
        else:
            raise ModelFileError(f"LoRA {path.name}: unexpected tensor {key!r}")
    for base, parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise ModelFileError(f"LoRA {path.name}: {base!r} lacks its {'up' if 'down' in parts else 'down'} matrix")
        down, up = parts["down"].float(), parts["up"].float()
        scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
        base = base.removeprefix("base_model.model.")
        if base.startswith("transformer."):
            lora.transformer[base[len("transformer."):]] = LoRALayer(down, up, scale)
        elif base.startswith("text_encoder."):
            lora.text_encoder[base[len("text_encoder."):].removeprefix("text_model.")] = LoRALayer(down, up, scale)
        elif base.startswith("lora_unet_") and (target := _kohya_target(base[len("lora_unet_"):])):
            prefix, modules = target
            if isinstance(modules, str):
                lora.transformer[prefix + modules] = LoRALayer(down, up, scale)
            else:                                     # a fused projection: its rows split in order
                sizes = [inner] * 3 + ([4 * inner] if len(modules) == 4 else [])
                if up.shape[0] != sum(sizes):
                    raise ModelFileError(f"LoRA {path.name}: {base!r} has {up.shape[0]} outputs; this FLUX "
                                         f"transformer needs {sum(sizes)}")
                for module, rows in zip(modules, torch.split(up, sizes, dim=0)):
                    lora.transformer[prefix + module] = LoRALayer(down, rows, scale)
        elif base.startswith("lora_te1_") and (target := _clip_target(base[len("lora_te1_"):])):
            lora.text_encoder[target] = LoRALayer(down, up, scale)
        else:
            raise ModelFileError(f"LoRA {path.name}: cannot place {base!r} on FLUX.1-dev (only the transformer "
                                 "and CLIP-L are supported)")
    return lora


@contextlib.contextmanager
def lora_applied(transformer: torch.nn.Module, text_encoder: torch.nn.Module, lora: LoRA | None, strength: float):
    """Forward hooks that add each LoRA layer's output for as long as the block runs."""
    if lora is None or strength == 0:
        yield
        return
    handles = []
    try:
        for model, layers in ((transformer, lora.transformer), (text_encoder, lora.text_encoder)):
            for path, layer in layers.items():
                module = _find(model, path)
                if module is None:
                    raise ModelFileError(f"LoRA {lora.name}: this model has no layer {path!r}")
                if layer.down.shape[1] != module.in_features or layer.up.shape[0] != module.out_features:
                    raise ModelFileError(f"LoRA {lora.name}: {path!r} is {layer.down.shape[1]}→{layer.up.shape[0]}; "
                                         f"the model's layer is {module.in_features}→{module.out_features}")
                handles.append(module.register_forward_hook(_adder(layer, strength)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _find(model: torch.nn.Module, path: str):
    for candidate in (path, f"text_model.{path}"):       # CLIP's layers sit under text_model in older transformers
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def _adder(layer: LoRALayer, strength: float):
    placed: dict = {}

    def hook(module, args, output):
        x = args[0]
        key = (x.device, x.dtype)
        if key not in placed:               # the LoRA follows the layer to its device (offloading moves it)
            placed.clear()
            placed[key] = (layer.down.to(x.device, x.dtype), layer.up.to(x.device, x.dtype))
        down, up = placed[key]
        return output + (strength * layer.scale) * F.linear(F.linear(x, down), up).to(output.dtype)

    return hook
