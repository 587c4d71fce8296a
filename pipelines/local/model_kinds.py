"""What a model file is, from its header alone: tensor names, dtypes and shapes, never the weights.

A .safetensors header is a JSON block at the start of the file; a .gguf file lists its tensors
before their data; a .bin/.pt (zip format) is opened memory-mapped, so its tensors are not read.
`identify` names what a header holds — a FLUX transformer in the BFL or the diffusers layout, a
FLUX all-in-one checkpoint, a VAE, a CLIP or T5 text encoder, or what else it is instead (an SDXL
checkpoint, FLUX.1-schnell, SD3, a LoRA …) — so a loader can refuse a wrong file by name before
any weight loads.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .weights import ModelFileError

MAX_HEADER_BYTES = 100_000_000          # a real header is well under 10 MB; more is not a safetensors file

# Comfy-Org's all-in-one FLUX checkpoints (ComfyUI's Flux model: its unet, vae and text encoder prefixes)
CHECKPOINT_TRANSFORMER = "model.diffusion_model."
CHECKPOINT_VAE = "vae."
CHECKPOINT_CLIP_L = "text_encoders.clip_l.transformer."
CHECKPOINT_T5XXL = "text_encoders.t5xxl.transformer."


@dataclass(frozen=True)
class Header:
    """A file's tensors (name → shape, in torch's order) and dtypes, without their data."""

    path: Path
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def has(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.shapes)

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self.shapes.get(key)

    def part(self, prefix: str) -> "Header":
        """The tensors under `prefix`, with the prefix taken off (one part of a checkpoint)."""
        return Header(self.path, {k[len(prefix):]: v for k, v in self.shapes.items() if k.startswith(prefix)},
                      {k[len(prefix):]: v for k, v in self.dtypes.items() if k.startswith(prefix)}, self.metadata)


def read_header(path: Path | str, what: str = "model file") -> Header | None:
    """The header of a .safetensors / .sft / .gguf / zip-format .bin or .pt file; None for a format
    whose names cannot be read without loading it (its check waits for the load)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what}: {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".safetensors", ".sft"):
            return _safetensors_header(path)
        if suffix == ".gguf":
            return _gguf_header(path)
        if suffix in (".bin", ".pt", ".pth", ".ckpt"):
            return _torch_header(path)
    except ModelFileError as exc:
        raise ModelFileError(f"{what}: {exc}") from None
    except Exception as exc:              # a foreign or damaged file: say which, never a traceback
        raise ModelFileError(f"{what}: cannot read {path.name} ({type(exc).__name__}: {str(exc)[:160]}); the file "
                             "may be incomplete — download it again") from None
    return None


def _safetensors_header(path: Path) -> Header:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length < 2 or length > min(size - 8, MAX_HEADER_BYTES):
            raise ModelFileError(f"cannot read {path.name} (its header is cut short or it is not a safetensors "
                                 "file); the file may be incomplete — download it again")
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", None) or {}
    shapes, dtypes, end = {}, {}, 0
    for name, info in header.items():
        shapes[name] = tuple(int(n) for n in info["shape"])
        dtypes[name] = str(info["dtype"])
        end = max(end, int(info["data_offsets"][1]))
    if 8 + length + end > size:
        raise ModelFileError(f"cannot read {path.name} ({size:,} of its {8 + length + end:,} bytes are there); the "
                             "file is incomplete — download it again")
    return Header(path, shapes, dtypes, metadata)


def _gguf_header(path: Path) -> Header:
    from gguf import GGUFReader               # memory-maps the file; tensor data is not read

    reader = GGUFReader(str(path))
    shapes = {tensor.name: tuple(int(n) for n in reversed(tensor.shape.tolist())) for tensor in reader.tensors}
    dtypes = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    return Header(path, shapes, dtypes)


def _torch_header(path: Path) -> Header | None:
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):
        return None                           # the legacy pickle format cannot be memory-mapped
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    shapes = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        elif isinstance(value, torch.Tensor):
            shapes[prefix[:-1]] = tuple(value.shape)

    walk("", state)
    return Header(path, shapes, {})


# ---- what a header holds ------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """`name`: one of the kinds the loaders take (below) or "other"; `label`: what it is, in words."""

    name: str
    label: str


FLUX_CHECKPOINT = "flux_checkpoint"          # transformer + VAE + CLIP-L + T5 in one file (Comfy-Org's)
FLUX_BFL = "flux_transformer"                # BFL's layout (flux1-dev.safetensors, fp8, GGUF conversions)
FLUX_DIFFUSERS = "flux_transformer_diffusers"
VAE = "vae"                                  # original (LDM) layout, as ae.safetensors
VAE_DIFFUSERS = "vae_diffusers"
CLIP_TEXT = "clip_text"                      # Hugging Face names
T5_ENCODER = "t5_encoder"                    # Hugging Face names
SDXL_CHECKPOINT = "sdxl_checkpoint"
CONTROLNET = "controlnet"
IP_ADAPTER = "ip_adapter"
OTHER = "other"


def _strip(shapes: Mapping[str, tuple], prefixes: tuple[str, ...]) -> dict[str, tuple]:
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in shapes):
            return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in shapes.items()}
    return dict(shapes)


def _precision(header: Header) -> str:
    """' (fp8 scaled)', ' (fp8)', ' (GGUF Q8_0)' … for a label; '' for 16/32-bit files."""
    keys = header.shapes
    if any(key.endswith((".scale_weight", ".weight_scale")) or key.endswith("scaled_fp8") for key in keys):
        return " (fp8 scaled)"
    dtypes = set(header.dtypes.values())
    if dtypes & {"F8_E4M3", "F8_E5M2"}:
        return " (fp8)"
    quantized = sorted(dtypes - {"F32", "F16", "BF16", "I64", "I32"})
    if header.path.suffix.lower() == ".gguf" and quantized:
        return f" (GGUF {quantized[0]})"
    return ""


def identify(header: Header) -> Kind:
    """What a file is. Checked from the most specific layout to the most general."""
    keys = header.shapes

    def has(prefix, names=keys):
        return any(key.startswith(prefix) for key in names)

    def contains(fragment, names=keys):
        return any(fragment in key for key in names)

    precision = _precision(header)
    if has(CHECKPOINT_TRANSFORMER + "double_blocks.") and (has("text_encoders.") or has(CHECKPOINT_VAE)):
        core = header.part(CHECKPOINT_TRANSFORMER).shapes
        if "guidance_in.in_layer.weight" not in core:
            return Kind(OTHER, "a FLUX.1-schnell all-in-one checkpoint (FLUX.1-schnell has no guidance input; "
                               "InstantCharacter is made for FLUX.1-dev)")
        return Kind(FLUX_CHECKPOINT, f"a FLUX all-in-one checkpoint{precision}")
    if contains(".lora_down.") or contains(".lora_A.") or has("lora_unet_") or has("lora_te"):
        return Kind(OTHER, "a LoRA")
    if has("image_proj") and has("ip_adapter"):
        if has("image_proj.resampler."):
            return Kind(IP_ADAPTER, "the InstantCharacter adapter")
        embedding = keys.get("image_proj.proj_in.weight")
        if embedding is not None and embedding[-1] == 512 and "image_proj.latents" in keys:
            return Kind(IP_ADAPTER, "the InstantID face adapter")
        return Kind(IP_ADAPTER, "an IP-Adapter for CLIP image features (not a face adapter)")
    if has("controlnet_cond_embedding.") or has("input_hint_block.") or has("control_model."):
        sdxl = has("add_embedding.") or contains("label_emb.")
        return Kind(CONTROLNET, f"{'an SDXL' if sdxl else 'a Stable Diffusion 1.x/2.x'} ControlNet")
    if has("controlnet_blocks.") or has("controlnet_x_embedder"):
        return Kind(OTHER, "a FLUX / SD3 ControlNet")

    unet = _strip(keys, (CHECKPOINT_TRANSFORMER,))
    if has("conditioner.embedders.1.model.") and has(CHECKPOINT_TRANSFORMER + "label_emb."):
        return Kind(SDXL_CHECKPOINT, "an SDXL checkpoint")
    if has("conditioner.embedders.0.model."):
        return Kind(OTHER, "an SDXL refiner checkpoint")
    if has("cond_stage_model.transformer."):
        return Kind(OTHER, "a Stable Diffusion 1.x checkpoint")
    if has("cond_stage_model.model."):
        return Kind(OTHER, "a Stable Diffusion 2.x checkpoint")
    if has("double_blocks.", unet):
        if contains(".absmax", unet) or contains("quant_state", unet):
            return Kind(OTHER, "a FLUX checkpoint in bitsandbytes NF4 (Forge's format, which diffusers cannot "
                               "read; use the bf16, fp8 or GGUF file — weight_format nf4 quantizes it on load)")
        if has("distilled_guidance_layer.", unet):
            return Kind(OTHER, "a Chroma model (FLUX-based, another architecture)")
        if "img_in.proj.weight" in unet or has("double_blocks.0.img_attn_qkv", unet):
            return Kind(OTHER, "a HunyuanVideo model")
        if "guidance_in.in_layer.weight" not in unet:
            return Kind(OTHER, "FLUX.1-schnell (it has no guidance input; InstantCharacter is made for FLUX.1-dev)")
        return Kind(FLUX_BFL, f"a FLUX.1-dev transformer{precision}")
    if has("double_stream_modulation_img.", unet):
        return Kind(OTHER, "a FLUX.2 model")
    if has("joint_blocks.", unet):
        return Kind(OTHER, "a Stable Diffusion 3 model")
    if has("single_transformer_blocks.", unet) and "x_embedder.weight" in unet:
        if not has("time_text_embed.guidance_embedder.", unet):
            return Kind(OTHER, "FLUX.1-schnell in diffusers layout (it has no guidance input; InstantCharacter is "
                               "made for FLUX.1-dev)")
        return Kind(FLUX_DIFFUSERS, f"a FLUX.1-dev transformer in diffusers layout{precision}")
    if has("transformer_blocks.0.img_mod.", unet):
        return Kind(OTHER, "a Qwen-Image model")
    if has("blocks.0.cross_attn.", unet) and has("patch_embedding.", unet):
        return Kind(OTHER, "a Wan video model")
    if has("input_blocks.", unet):
        return Kind(OTHER, "an SDXL UNet (diffusion model only)" if has("label_emb.", unet)
                    else "a Stable Diffusion 1.x/2.x UNet (diffusion model only)")
    if has("down_blocks.", unet) and has("time_embedding.", unet):
        return Kind(OTHER, "an SDXL UNet in diffusers layout" if has("add_embedding.", unet)
                    else "a UNet in diffusers layout")

    vae = _strip(keys, ("first_stage_model.", CHECKPOINT_VAE))
    if "encoder.down.0.block.0.conv1.weight" in vae or "encoder.down_blocks.0.resnets.0.conv1.weight" in vae:
        conv = vae.get("decoder.conv_in.weight", ())
        if len(conv) == 5:
            return Kind(OTHER, "a video VAE (3D convolutions)")
        latent = conv[1] if len(conv) == 4 else None
        family = {4: " (Stable Diffusion 1.x/2.x/SDXL)", 16: " (FLUX / SD3)"}.get(latent, "")
        layout = VAE if "encoder.down.0.block.0.conv1.weight" in vae else VAE_DIFFUSERS
        return Kind(layout, f"a VAE with {latent} latent channels{family}")
    if has("decoder.") and has("encoder.") and contains("residual"):
        return Kind(OTHER, "a video VAE")

    text = _strip(keys, ("text_model.",))
    if has("vision_model.") or has("visual."):
        return Kind(OTHER, "a CLIP vision (image) encoder")
    if "embeddings.token_embedding.weight" in text and has("encoder.layers.", text):
        width = text["embeddings.token_embedding.weight"][-1]
        name = {768: "CLIP-L", 1280: "CLIP-G (SDXL's second text encoder)", 1024: "OpenCLIP-H (SD 2.x)"}.get(
            width, f"{width}-wide CLIP")
        return Kind(CLIP_TEXT, f"a {name} text encoder{precision}")
    if has("transformer.resblocks.") or has("resblocks."):
        return Kind(OTHER, "an OpenCLIP text encoder (CLIP-G / SD 2.x layout)")
    if has("encoder.block.0.layer.0.SelfAttention."):
        if has("encoder.block.1.layer.0.SelfAttention.relative_attention_bias"):
            return Kind(OTHER, "a UMT5 text encoder (Wan's)")
        if has("decoder.block."):
            return Kind(OTHER, "a full T5 model (encoder and decoder; FLUX uses the encoder-only T5-XXL file)")
        width = (keys.get("shared.weight") or keys.get("encoder.embed_tokens.weight") or (0, 0))[-1]
        return Kind(T5_ENCODER, f"a T5{'-XXL' if width == 4096 else ''} text encoder{precision}")
    if has("model.layers.0.") or has("layers.0.attention") or has("blk.0."):
        return Kind(OTHER, "a language model (an LLM text encoder)")
    first = next(iter(sorted(keys)), None)
    return Kind(OTHER, f"a file this pack does not recognise (its first tensor is {first!r})" if first
                else "an empty file (no tensors)")


# ---- numbers the parts must agree on -------------------------------------------------------------

def dimension(header: Header, keys: tuple[str, ...], axis: int) -> int | None:
    """One size of the first of `keys` the header has (None when it has none)."""
    for key in keys:
        shape = header.shapes.get(key)
        if shape is not None and -len(shape) <= axis < len(shape):
            return shape[axis]
    return None


def count_blocks(header: Header, pattern: str) -> int:
    return len({int(m.group(1)) for key in header.shapes if (m := re.match(pattern, key))})


def is_flux_checkpoint(path: Path | str) -> bool:
    """A cheap test for a FLUX all-in-one checkpoint (to list it): its header's tensor names are
    searched as bytes, nothing else is read or parsed."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 0 < length <= MAX_HEADER_BYTES:
                return False
            header = handle.read(length)
    except OSError:
        return False
    return (b'"' + CHECKPOINT_TRANSFORMER.encode() + b'double_blocks.' in header
            and (b'"text_encoders.' in header or b'"' + CHECKPOINT_VAE.encode() in header))
