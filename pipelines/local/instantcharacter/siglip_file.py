"""SigLIP-so400m-384 from the single file many FLUX users already have for Redux
(`sigclip_vision_patch14_384.safetensors` in models/clip_vision), read so that InstantCharacter's
features equal those of the Hugging Face folder google/siglip-so400m-patch14-384 for the same weights.

The file's layout is what ComfyUI's own CLIPVisionLoader reads (comfy/clip_vision.py): Hugging Face's
SiglipVisionModel tensors under `vision_model.` — embeddings.patch_embedding (with a bias: SigLIP has
no class token), embeddings.position_embedding, encoder.layers.N.{layer_norm1, self_attn.{q,k,v,
out}_proj, layer_norm2, mlp.fc1, mlp.fc2}, post_layernorm — with or without the pooling head
(`vision_model.head.*`, which neither ComfyUI nor InstantCharacter uses). ComfyUI recognises it by
its 1152-wide layers and 729 positions and builds it from a fixed config (16 heads, tanh GELU, 384 px).

InstantCharacter reads the last hidden state (after post_layernorm) and hidden states 7, 13 and 26:
all computed from these tensors, by the same Hugging Face module as for the folder, so nothing is
approximated. The one size the weights do not carry, the head count, is SigLIP so400m's head width
(72; 1152 / 16, as ComfyUI's config). Everything else is read from the weights; any other file — a
CLIP vision model, DINOv2, SigLIP at another resolution — is refused naming what it is.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import model_kinds as kinds
from ..weights import ModelFileError, load_into, materialise_buffers, read_state
from .features import SIGLIP_SHALLOW_LAYERS, VIEW

PREFIX = "vision_model."
HEAD_WIDTH = 72                          # SigLIP so400m: 16 heads of 72 (the weights do not say)
EXTENSIONS = (".safetensors", ".sft")
LAYER = PREFIX + "encoder.layers.{}.self_attn.q_proj.weight"


def is_file_choice(name: str) -> bool:
    return isinstance(name, str) and name.lower().endswith(EXTENSIONS)


def _what_else(shapes) -> str:
    """A short name for a clip_vision file that is not SigLIP in this layout."""
    if any(k.startswith(("visual.transformer.", "visual.conv1")) for k in shapes):
        return "an open_clip CLIP vision model"
    if any(k.startswith(("embeddings.cls_token", "encoder.layer.")) for k in shapes):
        return "a DINOv2 model (single file)"
    if any(k.startswith(PREFIX + "embeddings.class_embedding") or k.startswith(PREFIX + "pre_layrnorm")
           for k in shapes):
        layers = kinds.count_blocks(kinds.Header(Path("."), shapes), r"vision_model\.encoder\.layers\.(\d+)\.")
        width = shapes.get(PREFIX + "embeddings.position_embedding.weight", (0, 0))[-1]
        return f"a CLIP vision model ({layers} layers, width {width})"
    if any(k.startswith("text_model.") for k in shapes):
        return "a text encoder"
    return "not a Hugging Face-layout vision model"


def config_from_header(header: kinds.Header) -> dict:
    """SiglipVisionConfig sizes from the tensor shapes; ModelFileError naming what the file is
    instead when it is not a SigLIP vision model InstantCharacter can use."""
    shapes = header.shapes
    name = header.path.name
    if header.shape(LAYER.format(0)) is None or any(k.startswith(PREFIX + "embeddings.class_embedding")
                                                     or k.startswith(PREFIX + "pre_layrnorm") for k in shapes):
        raise ModelFileError(f"{name} is {_what_else(shapes)}, not SigLIP; choose sigclip_vision_patch14_384"
                             ".safetensors (ComfyUI's SigLIP for Redux) or the Hugging Face folder "
                             "google/siglip-so400m-patch14-384")
    patch = header.shape(PREFIX + "embeddings.patch_embedding.weight")
    positions = header.shape(PREFIX + "embeddings.position_embedding.weight")
    fc1 = header.shape(PREFIX + "encoder.layers.0.mlp.fc1.weight")
    if patch is None or positions is None or fc1 is None or header.shape(PREFIX + "embeddings.patch_embedding.bias") is None:
        raise ModelFileError(f"{name} lacks SigLIP's patch embedding (with its bias), position embedding or MLP; "
                             "it is not a SigLIP vision model")
    width, patch_size = positions[1], patch[-1]
    grid = VIEW // patch_size
    if positions[0] != grid * grid:
        raise ModelFileError(f"{name} is SigLIP for another resolution ({positions[0]} positions); InstantCharacter "
                             f"encodes {VIEW}×{VIEW} views, which need {grid * grid} ({grid}×{grid} patches of "
                             f"{patch_size} px): choose sigclip_vision_patch14_384.safetensors")
    if width % HEAD_WIDTH:
        raise ModelFileError(f"{name}: width {width} is not a whole number of SigLIP so400m's {HEAD_WIDTH}-wide heads")
    layers = kinds.count_blocks(header, r"vision_model\.encoder\.layers\.(\d+)\.")
    if layers < max(SIGLIP_SHALLOW_LAYERS):
        raise ModelFileError(f"{name} has {layers} layers; InstantCharacter reads SigLIP's hidden states "
                             f"{', '.join(map(str, SIGLIP_SHALLOW_LAYERS))}, so it needs at least "
                             f"{max(SIGLIP_SHALLOW_LAYERS)}")
    return dict(hidden_size=width, intermediate_size=fc1[0], num_hidden_layers=layers,
                num_attention_heads=width // HEAD_WIDTH, num_channels=patch[1], image_size=VIEW, patch_size=patch_size,
                vision_use_head=header.has(PREFIX + "head."))


def file_problem(path: Path | str) -> str | None:
    """What is wrong with a chosen SigLIP file, from its header alone (no weights read); None if usable."""
    try:
        header = kinds.read_header(path, "SigLIP")
        if header is None:
            return f"{Path(path).name} is not a .safetensors file"
        config_from_header(header)
    except ModelFileError as exc:
        return str(exc)
    return None


def load_siglip_file(path: Path | str, dtype: torch.dtype):
    """The file as transformers' SiglipVisionModel (strict: every tensor present with its shape)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    path = Path(path)
    header = kinds.read_header(path, "SigLIP")
    if header is None:
        raise ModelFileError(f"SigLIP: {path.name} is not a .safetensors file")
    try:
        config = config_from_header(header)
    except ModelFileError as exc:
        raise ModelFileError(f"SigLIP: {exc}") from None
    state = read_state(path, "SigLIP", prefix=PREFIX)
    with torch.device("meta"):
        model = SiglipVisionModel(SiglipVisionConfig(**config))
    # the module's own names (transformers 5 names them without the `vision_model.` its files use)
    own_prefix = PREFIX if next(iter(model.state_dict())).startswith(PREFIX) else ""
    state = {own_prefix + key: value for key, value in state.items()}
    load_into(model, state, "SigLIP", path)
    materialise_buffers(model)
    return model.to(dtype).eval().requires_grad_(False)


def load_image_encoders_with_siglip_file(siglip_file: Path | str, dinov2_folder: Path | str, dtype: torch.dtype):
    """SigLIP from the single file (with the released model's image processor) + DINOv2 from its folder."""
    from transformers import Dinov2Model

    from .loading import image_encoders

    siglip = load_siglip_file(siglip_file, dtype)
    try:
        dinov2 = Dinov2Model.from_pretrained(str(dinov2_folder), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"DINOv2: cannot load {dinov2_folder} ({str(exc)[:200]})") from None
    return image_encoders(siglip, dinov2, None, Path(dinov2_folder))
