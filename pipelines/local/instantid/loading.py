"""Building the local InstantID pipeline from the files a ComfyUI user has — nothing is fetched.

SDXL comes from a single-file checkpoint (models/checkpoints: the original layout, UNet sizes read
from its weights the way ComfyUI detects them; a checkpoint that is not SDXL is refused by name
before anything loads) or a diffusers folder. The IdentityNet is a diffusers ControlNet folder or
its single .safetensors (sizes read from the weights); the face adapter is `ip-adapter.bin`;
antelopev2 comes from models/insightface/models/antelopev2. Tokenizer: a diffusers folder's own
tokenizer/ (and its scheduler config), else ComfyUI's CLIP copy. `instantid_problems` reads what each
file is from its header (no weights) so that a wrong file is refused by name before anything loads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

import torch

from .. import model_kinds as kinds
from ..weights import ModelFileError, count, load_into, materialise_buffers, need, read_state, strip_prefix

CONFIGS = Path(__file__).resolve().parent / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
HEAD_DIM = 64                   # SDXL's attention heads are 64 wide (5/10/20 heads at 320/640/1280)


def shipped_config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}


def load_sdxl_tokenizers(clip_dir: Path | str):
    """SDXL's two CLIP tokenizers from one CLIP vocabulary: the second pads with '!' (OpenCLIP's way)."""
    from transformers import CLIPTokenizer

    if not Path(clip_dir).is_dir():
        raise ModelFileError(f"CLIP tokenizer: folder {clip_dir} does not exist")
    first = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=77, local_files_only=True)
    second = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=77, pad_token="!", local_files_only=True)
    return first, second


# ---- what a checkpoint is ------------------------------------------------------------------

def checkpoint_keys(path: Path | str) -> list[str]:
    """The tensor names of a checkpoint without loading its tensors (safetensors), for an early check."""
    path = Path(path)
    if path.suffix in (".safetensors", ".sft"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                return list(handle.keys())
        except Exception as exc:
            raise ModelFileError(f"SDXL checkpoint: cannot read {path.name} ({type(exc).__name__}); the file may be "
                                 "incomplete — download it again") from None
    return list(read_state(path, "SDXL checkpoint"))


def describe_non_sdxl(keys: list[str]) -> str | None:
    """None for an SDXL base model or fine-tune; otherwise what the checkpoint is instead."""
    names = set(keys)

    def has(prefix):
        return any(key.startswith(prefix) for key in names)

    if has(UNET_PREFIX + "label_emb.") and has(CLIP_G_PREFIX) and has(CLIP_L_PREFIX):
        return None
    if has("conditioner.embedders.0.model."):
        return "an SDXL refiner (it has no CLIP-L text encoder)"
    if has("cond_stage_model.transformer."):
        return "a Stable Diffusion 1.x model"
    if has("cond_stage_model.model."):
        return "a Stable Diffusion 2.x model"
    if has("double_blocks.") or has(UNET_PREFIX + "double_blocks."):
        return "a FLUX model"
    if has(UNET_PREFIX + "joint_blocks.") or has("joint_blocks."):
        return "a Stable Diffusion 3 model"
    if has(UNET_PREFIX) and not has(CLIP_G_PREFIX):
        return "a diffusion model without SDXL's text encoders (a UNet-only file)"
    return "not a Stable Diffusion checkpoint"


# ---- what each chosen file is, from its header ----------------------------------------------------

PART_TITLES = {"sdxl": "SDXL", "identitynet": "IdentityNet", "adapter": "InstantID face adapter",
               "lcm_lora": "LCM-LoRA"}
SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def sdxl_folder_problem(folder: Path | str) -> str | None:
    """What is wrong with a diffusers folder chosen as SDXL (None: an SDXL base model or fine-tune)."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        return (f"{folder.name} has no model_index.json; choose a diffusers pipeline folder (or a single-file "
                "checkpoint in models/checkpoints)")
    kind = json.loads(index.read_text()).get("_class_name", "")
    if "XL" not in kind or "Refiner" in kind or not (folder / "text_encoder").is_dir():
        return (f"{folder.name} is a {kind or 'pipeline of unknown kind'} folder; InstantID needs an SDXL base model "
                "or a fine-tune of it")
    missing = [part for part in SDXL_PARTS if not (folder / part / "config.json").is_file()]
    if missing:
        return f"{folder.name} lacks {', '.join(f'{p}/config.json' for p in missing)}"
    return None


def _width_from_config(folder: Path, key: str = "cross_attention_dim") -> int | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get(key)
    return value if isinstance(value, int) else None


def _attention_width(header: kinds.Header, prefix: str = "") -> int | None:
    """The text width the cross-attention takes (SDXL: 2048)."""
    for key, shape in header.shapes.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1]
    return None


def instantid_problems(sdxl: Path | str | None = None, identitynet: Path | str | None = None,
                       adapter: Path | str | None = None, lcm_lora: Path | str | None = None) -> list[tuple[str, str]]:
    """(part, what is wrong) for each given file that is not what InstantID needs, and for widths
    the parts do not share (SDXL's cross-attention, the IdentityNet's, the face tokens'). Headers and
    configs only; files that are not given (or not there) are left out."""
    problems: list[tuple[str, str]] = []
    widths: dict[str, tuple[str, int]] = {}

    def header_of(part, path):
        try:
            return kinds.read_header(path, PART_TITLES[part])
        except ModelFileError as exc:
            problems.append((part, str(exc).partition(": ")[2] or str(exc)))
            return None

    if sdxl is not None and Path(sdxl).exists():
        sdxl = Path(sdxl)
        if sdxl.is_dir():
            problem = sdxl_folder_problem(sdxl)
            if problem:
                problems.append(("sdxl", problem))
            elif (width := _width_from_config(sdxl / "unet")) is not None:
                widths["sdxl"] = (sdxl.name, width)
        elif (header := header_of("sdxl", sdxl)) is not None:
            kind = describe_non_sdxl(list(header.shapes))
            if kind:
                problems.append(("sdxl", f"{sdxl.name} is {kind}; InstantID needs an SDXL checkpoint (SDXL base 1.0 "
                                         "or a fine-tune of it)"))
            elif (width := _attention_width(header, UNET_PREFIX)) is not None:
                widths["sdxl"] = (sdxl.name, width)
    if identitynet is not None and Path(identitynet).exists():
        identitynet = Path(identitynet)
        if identitynet.is_dir():
            config = identitynet / "config.json"
            name = json.loads(config.read_text()).get("_class_name", "") if config.is_file() else ""
            if name != "ControlNetModel":
                problems.append(("identitynet", f"{identitynet.name} is {'a ' + name if name else 'not a diffusers'} "
                                                "folder; choose InstantID's ControlNetModel folder"))
            elif (width := _width_from_config(identitynet)) is not None:
                widths["identitynet"] = (identitynet.name, width)
        elif (header := header_of("identitynet", identitynet)) is not None:
            kind = kinds.identify(header)
            if kind.name != kinds.CONTROLNET or "SDXL" not in kind.label:
                problems.append(("identitynet", f"{identitynet.name} is {kind.label}; identitynet needs InstantID's "
                                                "IdentityNet (an SDXL ControlNet, diffusion_pytorch_model.safetensors)"))
            elif not header.has("controlnet_cond_embedding."):
                problems.append(("identitynet", f"{identitynet.name} is a ControlNet in the original (non-diffusers) "
                                                "layout; choose InstantID's ControlNetModel folder or its "
                                                "diffusion_pytorch_model.safetensors"))
            elif (width := _attention_width(header)) is not None:
                widths["identitynet"] = (identitynet.name, width)
    if adapter is not None and Path(adapter).is_file():
        header = header_of("adapter", adapter)
        if header is not None:
            kind = kinds.identify(header)
            if kind.label != "the InstantID face adapter":
                problems.append(("adapter", f"{Path(adapter).name} is {kind.label}; adapter needs InstantID's "
                                            "ip-adapter.bin (InstantX/InstantID)"))
            elif (shape := header.shape("image_proj.proj_out.weight")) is not None:
                widths["adapter"] = (Path(adapter).name, shape[0])
    if lcm_lora is not None and Path(lcm_lora).is_file():
        header = header_of("lcm_lora", lcm_lora)
        if header is not None and (kind := kinds.identify(header)).label != "a LoRA":
            problems.append(("lcm_lora", f"{Path(lcm_lora).name} is {kind.label}; lcm_lora needs the LCM-LoRA for "
                                         "SDXL (latent-consistency/lcm-lora-sdxl)"))
    if "sdxl" in widths:
        base_name, base = widths["sdxl"]
        texts = {"identitynet": "the cross-attention of {name} takes {width}-wide text",
                 "adapter": "the face tokens of {name} are {width} wide"}
        for part, text in texts.items():
            if part in widths and widths[part][1] != base:
                name, width = widths[part]
                problems.append((part, f"{text.format(name=name, width=width)}; this UNet's cross-attention takes "
                                       f"{base} ({base_name}; is it made for SDXL?)"))
    return problems


# ---- UNet (original layout) -------------------------------------------------------------------

def sdxl_unet_config(state: Mapping[str, torch.Tensor], path: Path) -> dict:
    """diffusers' UNet config from an SDXL checkpoint's UNet weights (model.diffusion_model.*)."""
    what = "SDXL UNet"

    def shape(key):
        return tuple(need(state, UNET_PREFIX + key, what, path).shape)

    channels, in_channels = shape("input_blocks.0.0.weight")[:2]
    downsamples = sorted(int(key.split(".")[3]) for key in state
                         if key.startswith(UNET_PREFIX + "input_blocks.") and key.endswith(".0.op.weight"))
    if not downsamples:
        raise ModelFileError(f"{what}: {path.name} has no downsampling blocks; it is not an SDXL UNet")
    per_level = downsamples[0] - 1
    levels = len(downsamples) + 1
    block_out, depths = [], []
    for level in range(levels):
        first = 1 + (per_level + 1) * level
        block_out.append(shape(f"input_blocks.{first}.0.out_layers.3.weight")[0])
        depths.append(count({k: None for k in state}, rf"{UNET_PREFIX}input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\."))
    attention_keys = [key for key in state if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")]
    if not attention_keys:
        raise ModelFileError(f"{what}: {path.name} has no cross-attention; it is not an SDXL UNet")
    projection = tuple(state[[k for k in state if k.startswith(UNET_PREFIX) and k.endswith(".proj_in.weight")][0]].shape)
    label = shape("label_emb.0.0.weight")[1]
    pooled = tuple(need(state, CLIP_G_PREFIX + "text_projection", what, path).shape)[1]
    config = shipped_config("sdxl_unet.json")
    config.update(
        in_channels=in_channels, out_channels=shape("out.2.weight")[0], block_out_channels=block_out,
        layers_per_block=per_level, attention_head_dim=[max(1, c // HEAD_DIM) for c in block_out],
        transformer_layers_per_block=[max(1, d) for d in depths],
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        cross_attention_dim=tuple(state[attention_keys[0]].shape)[1], use_linear_projection=len(projection) == 2,
        projection_class_embeddings_input_dim=label, addition_time_embed_dim=(label - pooled) // 6)
    return config


def load_sdxl_checkpoint(path: Path | str, dtype: torch.dtype) -> dict:
    """UNet, VAE and both text encoders from one SDXL checkpoint."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     convert_open_clip_checkpoint)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    kind = describe_non_sdxl(checkpoint_keys(path))
    if kind:
        raise ModelFileError(f"{path.name} is {kind}; InstantID needs an SDXL checkpoint (SDXL base 1.0 or a "
                             "fine-tune of it)")
    state = {key: value.to(dtype) if value.is_floating_point() else value
             for key, value in read_state(path, "SDXL checkpoint").items()}

    unet_config = sdxl_unet_config(state, path)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    unet = load_into(unet, convert_ldm_unet_checkpoint(state, unet_config), "SDXL UNet", path)

    blocks = count(state, rf"{VAE_PREFIX}encoder\.down\.(\d+)\.")
    vae_config = shipped_config("sdxl_vae.json")
    vae_config.update(block_out_channels=[tuple(state[f"{VAE_PREFIX}encoder.down.{i}.block.0.conv1.weight"].shape)[0]
                                          for i in range(blocks)],
                      down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
                      layers_per_block=count(state, rf"{VAE_PREFIX}encoder\.down\.0\.block\.(\d+)\."),
                      latent_channels=tuple(need(state, VAE_PREFIX + "decoder.conv_in.weight", "SDXL VAE", path).shape)[1])
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
    vae = load_into(vae, convert_ldm_vae_checkpoint(state, vae_config), "SDXL VAE", path)

    clip_l_state = strip_prefix({k[len(CLIP_L_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_L_PREFIX)},
                                ("text_model.",))
    text_encoder = _clip(CLIPTextModel, "sdxl_text_encoder.json", clip_l_state, path, "SDXL CLIP-L")

    # diffusers' converter reads only the width from the model it is given
    hidden = tuple(need(state, CLIP_G_PREFIX + "token_embedding.weight", "SDXL CLIP-G", path).shape)[1]
    width_only = SimpleNamespace(config=SimpleNamespace(hidden_size=hidden))
    clip_g_state = strip_prefix(convert_open_clip_checkpoint(width_only, state, prefix=CLIP_G_PREFIX),
                                ("text_model.",))
    text_encoder_2 = _clip(CLIPTextModelWithProjection, "sdxl_text_encoder_2.json", clip_g_state, path, "SDXL CLIP-G")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}


def _clip(cls, config_name: str, state: dict, path: Path, what: str):
    """A CLIP text model sized from its weights (64-wide heads), keys without or with 'text_model.'."""
    from transformers import CLIPTextConfig

    vocab, hidden = tuple(need(state, "embeddings.token_embedding.weight", what, path).shape)
    config = shipped_config(config_name)
    config.update(vocab_size=vocab, hidden_size=hidden, num_attention_heads=max(1, hidden // HEAD_DIM),
                  num_hidden_layers=count(state, r"encoder\.layers\.(\d+)\."),
                  intermediate_size=tuple(need(state, "encoder.layers.0.mlp.fc1.weight", what, path).shape)[0],
                  max_position_embeddings=tuple(need(state, "embeddings.position_embedding.weight", what,
                                                     path).shape)[0])
    if "text_projection.weight" in state:
        config["projection_dim"] = tuple(state["text_projection.weight"].shape)[0]
    with torch.device("meta"):
        model = cls(CLIPTextConfig(**config))
    if any(key.startswith("text_model.") for key in model.state_dict()):
        state = {(key if key == "text_projection.weight" else f"text_model.{key}"): value for key, value in state.items()}
    model = load_into(model, state, what, path, ignore=("embeddings.position_ids", "text_model.embeddings.position_ids",
                                                        "logit_scale"))
    return materialise_buffers(model)


# ---- IdentityNet (diffusers ControlNet layout) --------------------------------------------------

def controlnet_config(state: Mapping[str, torch.Tensor], path: Path, pooled_dim: int) -> dict:
    """diffusers' ControlNet config from its weights; `pooled_dim` is the SDXL pooled text width (it
    and the six size numbers make up the added-condition input)."""
    what = "IdentityNet"

    def shape(key):
        return tuple(need(state, key, what, path).shape)

    levels = count(state, r"down_blocks\.(\d+)\.")
    block_out = [shape(f"down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(levels)]
    depths = [count(state, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") for i in range(levels)]
    embedding = count(state, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    cond_channels = [shape("controlnet_cond_embedding.conv_in.weight")[0]] + [
        shape(f"controlnet_cond_embedding.blocks.{i}.weight")[0] for i in range(1, embedding, 2)]
    attention = [k for k in state if k.endswith("attn2.to_k.weight")]
    if not attention:
        raise ModelFileError(f"{what}: {Path(path).name} has no cross-attention; it is not an SDXL ControlNet")
    label = shape("add_embedding.linear_1.weight")[1]
    config = shipped_config("identitynet.json")
    config.update(
        in_channels=shape("conv_in.weight")[1], block_out_channels=block_out,
        layers_per_block=count(state, r"down_blocks\.0\.resnets\.(\d+)\."),
        attention_head_dim=[max(1, c // HEAD_DIM) for c in block_out], transformer_layers_per_block=[max(1, d) for d in depths],
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        cross_attention_dim=tuple(state[attention[0]].shape)[1], conditioning_embedding_out_channels=cond_channels,
        projection_class_embeddings_input_dim=label, addition_time_embed_dim=(label - pooled_dim) // 6)
    return config


def load_identitynet(source: Path | str, dtype: torch.dtype, pooled_dim: int):
    """The IdentityNet from its diffusers folder (config.json + weights) or its single .safetensors."""
    from diffusers import ControlNetModel

    source = Path(source)
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise ModelFileError(f"IdentityNet: {source} has no config.json; choose the ControlNetModel folder")
        return ControlNetModel.from_pretrained(str(source), torch_dtype=dtype, local_files_only=True,
                                               low_cpu_mem_usage=False).eval().requires_grad_(False)
    state = {k: v.to(dtype) for k, v in read_state(source, "IdentityNet").items()}
    config = controlnet_config(state, source, pooled_dim)
    with torch.device("meta"):
        model = ControlNetModel(**config)
    return load_into(model, state, "IdentityNet", source)


# ---- SDXL from a diffusers folder --------------------------------------------------------------


def load_sdxl_folder(folder: Path | str, dtype: torch.dtype) -> dict:
    """UNet, VAE and both text encoders from a diffusers SDXL folder (its scheduler config too)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    problem = sdxl_folder_problem(folder)
    if problem:
        raise ModelFileError(f"SDXL: {problem}")

    def part(cls, name):
        try:
            return cls.from_pretrained(str(folder), subfolder=name, torch_dtype=dtype, local_files_only=True,
                                       low_cpu_mem_usage=False).eval().requires_grad_(False)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"SDXL: cannot load {folder.name}/{name} ({str(exc).splitlines()[0][:200]})") from None

    scheduler = folder / "scheduler" / "scheduler_config.json"
    return {"unet": part(UNet2DConditionModel, "unet"), "vae": part(AutoencoderKL, "vae"),
            "text_encoder": part(CLIPTextModel, "text_encoder"),
            "text_encoder_2": part(CLIPTextModelWithProjection, "text_encoder_2"),
            "scheduler_config": json.loads(scheduler.read_text()) if scheduler.is_file() else None}


# ---- everything -------------------------------------------------------------------------------

@dataclass
class InstantIDFiles:
    sdxl: Path                    # a single-file SDXL checkpoint or a diffusers SDXL folder
    identitynet: Path             # ControlNetModel folder or its .safetensors
    adapter: Path                 # ip-adapter.bin
    clip_tokenizer: Path          # a CLIP tokenizer folder (ComfyUI's sd1_tokenizer), unless the SDXL folder has one
    antelopev2: Path | None = None        # the antelopev2 folder; None: faces are given precomputed
    lcm_lora: Path | None = None          # LCM-LoRA for SDXL, for the fast mode

    def check(self) -> None:
        """Every named file exists (and a checkpoint is SDXL) before anything heavy loads."""
        from ..faces import find_antelopev2

        sdxl = Path(self.sdxl)
        if sdxl.is_dir():
            if not (sdxl / "model_index.json").is_file():
                raise ModelFileError(f"SDXL: {sdxl} has no model_index.json; choose a diffusers pipeline folder")
        elif not sdxl.is_file():
            raise ModelFileError(f"SDXL: {sdxl} does not exist")
        identitynet = Path(self.identitynet)
        if not identitynet.exists():
            raise ModelFileError(f"IdentityNet: {identitynet} does not exist")
        for what, path in (("InstantID face adapter", self.adapter), ("LCM-LoRA", self.lcm_lora)):
            if path is not None and not Path(path).is_file():
                raise ModelFileError(f"{what}: {path} does not exist")
        problems = instantid_problems(self.sdxl, self.identitynet, self.adapter, self.lcm_lora)
        if problems:
            # an SDXL problem reads as before ("x.safetensors is a Stable Diffusion 1.x model; …")
            raise ModelFileError("; ".join(text if part == "sdxl" else f"{PART_TITLES[part]}: {text}"
                                           for part, text in problems))
        if self.antelopev2 is not None:
            find_antelopev2(self.antelopev2)

    def tokenizer_folder(self) -> Path:
        """The SDXL diffusers folder's own tokenizer/ where it has one, else the given CLIP copy."""
        own = Path(self.sdxl) / "tokenizer"
        return own if Path(self.sdxl).is_dir() and own.is_dir() and any(own.iterdir()) else Path(self.clip_tokenizer)


def build_pipeline(files: InstantIDFiles, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   memory: str = "resident", face_device: str = "cpu", face_analyzer=None, host=None):
    """Everything loaded, checked and assembled into an InstantIDPipeline. The face models come from
    `files.antelopev2`, or are an already loaded FaceAnalyzer (`face_analyzer`, shared with other nodes).
    `host`: a memory.DeviceHost that shares the device with other models (ComfyUI's model management)."""
    from ..faces import FaceAnalyzer
    from ..memory import apply_memory_mode
    from .adapter import build_face_adapter, install_face_adapter
    from .pipeline import InstantIDPipeline, SDXLModels

    files.check()
    tokenizer, _ = load_sdxl_tokenizers(files.tokenizer_folder())
    adapter_state = read_state(files.adapter, "InstantID face adapter")
    faces = FaceAnalyzer(files.antelopev2, device=face_device) if files.antelopev2 is not None else face_analyzer
    sdxl = Path(files.sdxl)
    parts = load_sdxl_folder(sdxl, dtype) if sdxl.is_dir() else load_sdxl_checkpoint(sdxl, dtype)
    scheduler_config = parts.pop("scheduler_config", None) or shipped_config("sdxl_scheduler.json")
    pooled_dim = parts["text_encoder_2"].config.projection_dim
    controlnet = load_identitynet(files.identitynet, dtype, pooled_dim)
    adapter = build_face_adapter(adapter_state, parts["unet"], dtype)
    install_face_adapter(parts["unet"], adapter)          # before placement: the processors move with the UNet
    lcm = None
    if files.lcm_lora is not None:
        from .lora import read_sdxl_lora

        lcm = read_sdxl_lora(files.lcm_lora, parts["unet"])
    device = torch.device(device)
    components = [parts["unet"], controlnet, parts["vae"], parts["text_encoder"], parts["text_encoder_2"],
                  adapter.resampler]
    placement = apply_memory_mode(memory, device, components, streamed=(parts["unet"], controlnet), host=host)
    models = SDXLModels(controlnet=controlnet, tokenizer=tokenizer, scheduler_config=scheduler_config, **parts)
    return InstantIDPipeline(models=models, adapter=adapter, device=device, dtype=dtype, faces=faces,
                             placement=placement, lcm=lcm)
