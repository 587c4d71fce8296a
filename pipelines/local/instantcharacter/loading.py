"""Building the local InstantCharacter pipeline from the files a ComfyUI user already has — nothing
is ever fetched from a hub.

FLUX.1-dev comes from a diffusers folder (used whole: its tokenizers and scheduler too), from a
FLUX all-in-one checkpoint (Comfy-Org's: transformer, VAE, CLIP-L and T5 in one file, each part read
on its own), or from single files: the transformer in the BFL or the diffusers layout (bf16, fp8 with
or without ComfyUI's weight scales, GGUF), `ae.safetensors` in the original or the diffusers VAE
layout, `clip_l` and `t5xxl` with Hugging Face key names (fp16, or fp8 "scaled"). A file chosen for a
part wins over the folder's or the checkpoint's. Every architecture size is read from the weights
(as ComfyUI detects models); the shipped real-size configs supply the rest (activations, epsilons,
scheduler). SigLIP and DINOv2 are Hugging Face folders. Tokenizers: the diffusers folder's own,
else the copies ComfyUI ships (the caller passes their folders).

Every problem is raised as `ModelFileError` naming the file and what is wrong. Each part's kind and
the sizes the parts must share are read from the file headers (`flux_problems`) before any weight
loads.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from .. import model_kinds as kinds
from ..weights import (ModelFileError, count, is_quantized, load_into, materialise_buffers, need, read_state,
                       shape_of, strip_prefix, unscale_fp8)

CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


# ---- FLUX transformer (BFL layout) -----------------------------------------------------------

def _split(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(tensor, sizes, dim=0))


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift)."""
    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def flux_config_from_bfl(state: Mapping[str, torch.Tensor], path: Path) -> dict:
    what = "FLUX transformer"
    inner, in_channels = shape_of(need(state, "img_in.weight", what, path))
    head_dim = shape_of(need(state, "double_blocks.0.img_attn.norm.query_norm.scale", what, path))[0]
    config = {k: v for k, v in shipped_config("flux_transformer.json").items() if not k.startswith("_")}
    if sum(config["axes_dims_rope"]) != head_dim:
        raise ModelFileError(f"{what}: {Path(path).name} has {head_dim}-wide attention heads; FLUX uses 128")
    mlp = shape_of(need(state, "double_blocks.0.img_mlp.0.weight", what, path))[0]
    if mlp != 4 * inner:
        raise ModelFileError(f"{what}: {Path(path).name} has an MLP of {mlp} for width {inner}; FLUX uses 4x")
    config.update(in_channels=in_channels, num_attention_heads=inner // head_dim, attention_head_dim=head_dim,
                  num_layers=count(state, r"double_blocks\.(\d+)\."),
                  num_single_layers=count(state, r"single_blocks\.(\d+)\."),
                  joint_attention_dim=shape_of(need(state, "txt_in.weight", what, path))[1],
                  pooled_projection_dim=shape_of(need(state, "vector_in.in_layer.weight", what, path))[1],
                  guidance_embeds="guidance_in.in_layer.weight" in state)
    return config


def flux_config_from_diffusers(state: Mapping[str, torch.Tensor], path: Path) -> dict:
    """The config of a single-file transformer that already has diffusers' key names."""
    what = "FLUX transformer"
    inner, in_channels = shape_of(need(state, "x_embedder.weight", what, path))
    head_dim = shape_of(need(state, "transformer_blocks.0.attn.norm_q.weight", what, path))[0]
    config = {k: v for k, v in shipped_config("flux_transformer.json").items() if not k.startswith("_")}
    if sum(config["axes_dims_rope"]) != head_dim:
        raise ModelFileError(f"{what}: {Path(path).name} has {head_dim}-wide attention heads; FLUX uses 128")
    config.update(in_channels=in_channels, num_attention_heads=inner // head_dim, attention_head_dim=head_dim,
                  num_layers=count(state, r"transformer_blocks\.(\d+)\."),
                  num_single_layers=count(state, r"single_transformer_blocks\.(\d+)\."),
                  joint_attention_dim=shape_of(need(state, "context_embedder.weight", what, path))[1],
                  pooled_projection_dim=shape_of(need(state, "time_text_embed.text_embedder.linear_1.weight", what,
                                                      path))[1],
                  guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in state)
    return config


def flux_bfl_to_diffusers(state: Mapping[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """BFL key names → diffusers FluxTransformer2DModel key names (fused projections split)."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    out: dict[str, torch.Tensor] = {}
    taken: set[str] = set()

    def move(target: str, source: str, transform=None):
        for end in ("weight", "bias"):
            key = f"{source}.{end}"
            if key in state:
                out[f"{target}.{end}"] = transform(state[key]) if transform else state[key]
                taken.add(key)

    def split(targets: list[str], source: str, sizes: list[int]):
        for end in ("weight", "bias"):
            key = f"{source}.{end}"
            if key in state:
                for target, part in zip(targets, _split(state[key], sizes)):
                    out[f"{target}.{end}"] = part
                taken.add(key)

    def scale(target: str, source: str):
        out[target] = state[source]
        taken.add(source)

    move("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")
    move("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    move("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")
    move("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    if config["guidance_embeds"]:
        move("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer")
        move("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    move("context_embedder", "txt_in")
    move("x_embedder", "img_in")
    for i in range(config["num_layers"]):
        to, src = f"transformer_blocks.{i}", f"double_blocks.{i}"
        move(f"{to}.norm1.linear", f"{src}.img_mod.lin")
        move(f"{to}.norm1_context.linear", f"{src}.txt_mod.lin")
        split([f"{to}.attn.to_q", f"{to}.attn.to_k", f"{to}.attn.to_v"], f"{src}.img_attn.qkv", [inner] * 3)
        split([f"{to}.attn.add_q_proj", f"{to}.attn.add_k_proj", f"{to}.attn.add_v_proj"], f"{src}.txt_attn.qkv",
              [inner] * 3)
        scale(f"{to}.attn.norm_q.weight", f"{src}.img_attn.norm.query_norm.scale")
        scale(f"{to}.attn.norm_k.weight", f"{src}.img_attn.norm.key_norm.scale")
        scale(f"{to}.attn.norm_added_q.weight", f"{src}.txt_attn.norm.query_norm.scale")
        scale(f"{to}.attn.norm_added_k.weight", f"{src}.txt_attn.norm.key_norm.scale")
        move(f"{to}.ff.net.0.proj", f"{src}.img_mlp.0")
        move(f"{to}.ff.net.2", f"{src}.img_mlp.2")
        move(f"{to}.ff_context.net.0.proj", f"{src}.txt_mlp.0")
        move(f"{to}.ff_context.net.2", f"{src}.txt_mlp.2")
        move(f"{to}.attn.to_out.0", f"{src}.img_attn.proj")
        move(f"{to}.attn.to_add_out", f"{src}.txt_attn.proj")
    for i in range(config["num_single_layers"]):
        to, src = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        move(f"{to}.norm.linear", f"{src}.modulation.lin")
        split([f"{to}.attn.to_q", f"{to}.attn.to_k", f"{to}.attn.to_v", f"{to}.proj_mlp"], f"{src}.linear1",
              [inner] * 3 + [4 * inner])
        scale(f"{to}.attn.norm_q.weight", f"{src}.norm.query_norm.scale")
        scale(f"{to}.attn.norm_k.weight", f"{src}.norm.key_norm.scale")
        move(f"{to}.proj_out", f"{src}.linear2")
    move("norm_out.linear", "final_layer.adaLN_modulation.1", _swap_halves)
    move("proj_out", "final_layer.linear")
    leftover = sorted(set(state) - taken)
    if leftover:
        raise ModelFileError(f"FLUX transformer: unexpected tensor {leftover[0]!r}")
    return out


def load_flux_transformer(path: Path | str, dtype: torch.dtype, prefix: str | None = None):
    """A BFL- or diffusers-layout file: .safetensors (bf16, fp16, fp8, fp8 "scaled") or .gguf, or the
    part of a checkpoint under `prefix`. GGUF weights stay quantized in memory and are dequantized
    layer by layer as they run (diffusers' GGUF layers)."""
    from diffusers import FluxTransformer2DModel

    path = Path(path)
    state = strip_prefix(read_state(path, "FLUX transformer", prefix), (kinds.CHECKPOINT_TRANSFORMER,))
    diffusers_layout = "x_embedder.weight" in state
    config = flux_config_from_diffusers(state, path) if diffusers_layout else flux_config_from_bfl(state, path)
    if path.suffix == ".gguf":
        state = {key: value if is_quantized(value) else value.to(dtype) for key, value in state.items()}
    else:
        state = unscale_fp8(state, dtype)
    converted = state if diffusers_layout else flux_bfl_to_diffusers(state, config)
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
        if path.suffix == ".gguf":
            from diffusers.quantizers.gguf.utils import _replace_with_gguf_linear

            _replace_with_gguf_linear(model, dtype, converted)
    return load_into(model, converted, "FLUX transformer", path)


# ---- VAE (original layout) ---------------------------------------------------------------------

def load_flux_vae(path: Path | str, dtype: torch.dtype, prefix: str | None = None):
    """ae.safetensors (original layout), a VAE in diffusers' layout, or a checkpoint's VAE part."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = Path(path)
    what = "FLUX VAE"
    state = strip_prefix(read_state(path, what, prefix), ("first_stage_model.", kinds.CHECKPOINT_VAE))
    diffusers_layout = "encoder.down_blocks.0.resnets.0.conv1.weight" in state
    block, resnet = ("down_blocks", "resnets") if diffusers_layout else ("down", "block")
    blocks = count(state, rf"encoder\.{block}\.(\d+)\.")
    if not blocks:
        raise ModelFileError(f"{what}: {path.name} has no encoder blocks; it is not a VAE file")
    config = {k: v for k, v in shipped_config("flux_vae.json").items() if not k.startswith("_")}
    config.update(
        block_out_channels=[need(state, f"encoder.{block}.{i}.{resnet}.0.conv1.weight", what, path).shape[0]
                            for i in range(blocks)],
        down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
        layers_per_block=count(state, rf"encoder\.{block}\.0\.{resnet}\.(\d+)\."),
        latent_channels=need(state, "decoder.conv_in.weight", what, path).shape[1])
    state = {k: v.to(dtype) for k, v in state.items()}
    converted = state if diffusers_layout else convert_ldm_vae_checkpoint(state, config)
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    return load_into(model, converted, what, path)


# ---- text encoders (Hugging Face key names) -------------------------------------------------------

def load_clip_l(path: Path | str, dtype: torch.dtype, prefix: str | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    what = "CLIP-L text encoder"
    # files carry Hugging Face names with the "text_model." prefix; some newer exports drop it
    state = strip_prefix(unscale_fp8(read_state(path, what, prefix), dtype), ("text_model.",))
    vocab, hidden = need(state, "embeddings.token_embedding.weight", what, path).shape
    config = shipped_config("clip_l.json")
    config.update(vocab_size=vocab, hidden_size=hidden, num_attention_heads=max(1, hidden // 64),
                  num_hidden_layers=count(state, r"encoder\.layers\.(\d+)\."),
                  intermediate_size=need(state, "encoder.layers.0.mlp.fc1.weight", what, path).shape[0],
                  max_position_embeddings=need(state, "embeddings.position_embedding.weight", what, path).shape[0])
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**config))
    if any(key.startswith("text_model.") for key in model.state_dict()):      # older transformers
        state = {f"text_model.{key}": value for key, value in state.items()}
    model = load_into(model, state, what, path, ignore=("text_projection.", "logit_scale", "embeddings.position_ids",
                                                         "text_model.embeddings.position_ids"))
    return materialise_buffers(model)


def load_t5xxl(path: Path | str, dtype: torch.dtype, prefix: str | None = None):
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    what = "T5-XXL text encoder"
    state = unscale_fp8(read_state(path, what, prefix), dtype)
    shared = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    if shared is None:
        raise ModelFileError(f"{what}: {path.name} has no token embedding; it is not a T5 encoder file")
    state["shared.weight"] = state["encoder.embed_tokens.weight"] = shared
    bias = need(state, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", what, path)
    heads = bias.shape[1]
    config = shipped_config("t5xxl.json")
    config.update(vocab_size=shared.shape[0], d_model=shared.shape[1], num_heads=heads,
                  d_kv=need(state, "encoder.block.0.layer.0.SelfAttention.q.weight", what, path).shape[0] // heads,
                  d_ff=need(state, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", what, path).shape[0],
                  num_layers=count(state, r"encoder\.block\.(\d+)\."),
                  relative_attention_num_buckets=bias.shape[0])
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**config))
    model = load_into(model, state, what, path)
    model.encoder.embed_tokens = model.shared
    return model


def load_tokenizers(clip_dir: Path | str, t5_dir: Path | str):
    """CLIP (77 tokens) and T5 tokenizers from local folders (ComfyUI's own copies, usually)."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    for name, folder in (("CLIP tokenizer", clip_dir), ("T5 tokenizer", t5_dir)):
        if not Path(folder).is_dir():
            raise ModelFileError(f"{name}: folder {folder} does not exist")
    clip = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=77, local_files_only=True)
    t5 = T5TokenizerFast.from_pretrained(str(t5_dir), model_max_length=512, local_files_only=True)
    return clip, t5


# ---- the pieces a pipeline is built from -----------------------------------------------------

PART_TITLES = {"transformer": "FLUX transformer", "vae": "FLUX VAE", "clip_l": "CLIP-L text encoder",
               "t5xxl": "T5-XXL text encoder"}
# where each part lies in a diffusers folder and in an all-in-one checkpoint
FOLDER_PARTS = {"transformer": "transformer", "vae": "vae", "clip_l": "text_encoder", "t5xxl": "text_encoder_2"}
CHECKPOINT_PARTS = {"transformer": kinds.CHECKPOINT_TRANSFORMER, "vae": kinds.CHECKPOINT_VAE,
                    "clip_l": kinds.CHECKPOINT_CLIP_L, "t5xxl": kinds.CHECKPOINT_T5XXL}
# what each part's file must be (kinds.identify), and what to get instead
PART_KINDS = {"transformer": (kinds.FLUX_BFL, kinds.FLUX_DIFFUSERS, kinds.FLUX_CHECKPOINT),
              "vae": (kinds.VAE, kinds.VAE_DIFFUSERS), "clip_l": (kinds.CLIP_TEXT,), "t5xxl": (kinds.T5_ENCODER,)}
PART_NEEDS = {"transformer": "InstantCharacter needs a FLUX.1-dev transformer (flux1-dev.safetensors, an fp8 or GGUF "
                             "conversion) or a FLUX.1-dev all-in-one checkpoint",
              "vae": "choose FLUX's VAE (ae.safetensors)", "clip_l": "choose the CLIP-L text encoder (clip_l.safetensors)",
              "t5xxl": "choose the T5-XXL text encoder (t5xxl_fp16.safetensors or an fp8 version)"}
PARTS = tuple(PART_TITLES)


@dataclass(frozen=True)
class FluxFiles:
    """FLUX.1-dev: a diffusers folder, an all-in-one checkpoint, single files, or a folder or a
    checkpoint with some parts replaced by files (a part's own file wins)."""

    folder: Path | None = None
    transformer: Path | None = None
    vae: Path | None = None
    clip_l: Path | None = None
    t5xxl: Path | None = None
    checkpoint: Path | None = None

    def source(self, part: str) -> tuple[str, Path, str | None] | None:
        """Where a part comes from: ("file", path, prefix) — the prefix is set when the file is an
        all-in-one checkpoint —, ("checkpoint", path, prefix), ("folder", path/subfolder, None), or None."""
        file = getattr(self, part)
        if file is not None:
            return "file", Path(file), _checkpoint_prefix(Path(file), part)
        if self.checkpoint is not None:
            return "checkpoint", Path(self.checkpoint), CHECKPOINT_PARTS[part]
        if self.folder is not None:
            return "folder", Path(self.folder) / FOLDER_PARTS[part], None
        return None

    def check(self) -> None:
        """Before any weight loads: every part has a source, each source exists, each file is what
        its part needs and the parts' sizes fit together (read from the file headers)."""
        for part in PARTS:
            file = getattr(self, part)
            if file is None and self.folder is None and self.checkpoint is None:
                raise ModelFileError(f"FLUX: no {part} file chosen and no diffusers folder or checkpoint to take it "
                                     "from")
            if file is not None and not Path(file).is_file():
                raise ModelFileError(f"FLUX {part}: {file} does not exist")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise ModelFileError(f"FLUX checkpoint: {self.checkpoint} does not exist")
        if self.folder is not None:
            index = Path(self.folder) / "model_index.json"
            if not index.is_file():
                raise ModelFileError(f"FLUX diffusers folder {self.folder} has no model_index.json; choose the folder "
                                     "that holds transformer/, vae/, text_encoder/ …")
        problems = flux_problems(self)
        if problems:
            raise ModelFileError("; ".join(f"{PART_TITLES[part]}: {text}" for part, text in problems))


def _checkpoint_prefix(path: Path, part: str) -> str | None:
    """The part's prefix when `path` is an all-in-one checkpoint (a cheap look at its header)."""
    if path.suffix.lower() not in (".safetensors", ".sft") or not path.is_file():
        return None
    header = kinds.read_header(path, PART_TITLES[part])
    return CHECKPOINT_PARTS[part] if kinds.identify(header).name == kinds.FLUX_CHECKPOINT else None


@dataclass(frozen=True)
class PartFacts:
    """What one part's header or config says: its file or folder name, and the sizes the others need."""

    name: str
    sizes: dict


def _folder_config(folder: Path, part: str) -> PartFacts | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    values = json.loads(config.read_text())
    keys = {"transformer": ("in_channels", "pooled_projection_dim", "joint_attention_dim", "guidance_embeds"),
            "vae": ("latent_channels",), "clip_l": ("hidden_size",), "t5xxl": ("d_model",)}[part]
    return PartFacts(f"{folder.parent.name}/{folder.name}", {key: values.get(key) for key in keys})


def _header_facts(header: kinds.Header, part: str) -> dict:
    def size(keys, axis):
        return kinds.dimension(header, keys, axis)

    if part == "transformer":
        core = header.part(kinds.CHECKPOINT_TRANSFORMER) if header.has(kinds.CHECKPOINT_TRANSFORMER) else header
        return {"in_channels": kinds.dimension(core, ("img_in.weight", "x_embedder.weight"), 1),
                "pooled_projection_dim": kinds.dimension(
                    core, ("vector_in.in_layer.weight", "time_text_embed.text_embedder.linear_1.weight"), 1),
                "joint_attention_dim": kinds.dimension(core, ("txt_in.weight", "context_embedder.weight"), 1)}
    if part == "vae":
        return {"latent_channels": size(("decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight",
                                         "vae.decoder.conv_in.weight"), 1)}
    if part == "clip_l":
        return {"hidden_size": size(("text_model.embeddings.token_embedding.weight",
                                     "embeddings.token_embedding.weight"), 1)}
    return {"d_model": size(("shared.weight", "encoder.embed_tokens.weight"), 1)}


def flux_problems(files: FluxFiles, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(part, what is wrong) for each part whose file is not what it should be, and for sizes the
    parts do not share — from file headers and folder configs only, no weights. Parts in `skip`
    (and parts whose file is missing: check() names those) are left out."""
    problems: list[tuple[str, str]] = []
    facts: dict[str, PartFacts] = {}
    for part in PARTS:
        if part in skip:
            continue
        try:
            where = files.source(part)
        except ModelFileError as exc:
            problems.append((part, str(exc).partition(": ")[2] or str(exc)))
            continue
        if where is None:
            continue
        how, path, prefix = where
        if how == "folder":
            if path.parent.is_dir() and part == "transformer":
                problem = _folder_problem(path.parent)
                if problem:
                    problems.append((part, problem))
                    continue
            found = _folder_config(path, part)
            if found is None and path.parent.is_dir():
                problems.append((part, f"the diffusers folder {path.parent.name} has no {path.name}/config.json"))
            elif found is not None:
                facts[part] = found
            continue
        if not path.is_file():
            continue
        try:
            header = kinds.read_header(path, PART_TITLES[part])
        except ModelFileError as exc:
            problems.append((part, str(exc).partition(": ")[2] or str(exc)))
            continue
        if header is None:
            continue
        kind = kinds.identify(header)
        if how == "checkpoint" or prefix is not None:
            if kind.name != kinds.FLUX_CHECKPOINT:
                problems.append(("transformer", f"{path.name} is {kind.label}, not a FLUX.1-dev all-in-one checkpoint"))
                return problems
            part_header = header.part(prefix)
            if not part_header.shapes:
                problems.append((part, f"{path.name} holds no {PART_TITLES[part]}; choose a {part} file"))
                continue
            facts[part] = PartFacts(path.name, _header_facts(part_header, part))
            continue
        if kind.name not in PART_KINDS[part]:
            problems.append((part, f"{path.name} is {kind.label}; {PART_NEEDS[part]}"))
            continue
        facts[part] = PartFacts(path.name, _header_facts(header.part(prefix) if prefix else header, part))
    problems.extend(_size_problems(facts))
    return problems


def _folder_problem(folder: Path) -> str | None:
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    kind = json.loads(index.read_text()).get("_class_name", "")
    if "Flux" not in kind or any(other in kind for other in ("Fill", "Control", "Kontext", "Redux", "Prior")):
        return f"{folder.name} is a {kind or 'pipeline of unknown kind'} folder; InstantCharacter needs FLUX.1-dev"
    config = folder / "transformer" / "config.json"
    if config.is_file() and not json.loads(config.read_text()).get("guidance_embeds", True):
        return f"{folder.name} is FLUX.1-schnell (no guidance input); InstantCharacter is made for FLUX.1-dev"
    return None


def _size_problems(facts: dict[str, PartFacts]) -> list[tuple[str, str]]:
    """The parts must agree: the transformer takes 4 × the VAE's latent channels (2×2 patches), CLIP-L's
    width as its pooled input and T5's width as its text input."""
    if "transformer" not in facts:
        return []
    core = facts["transformer"]
    problems = []
    in_channels = core.sizes.get("in_channels")
    latent = facts["vae"].sizes.get("latent_channels") if "vae" in facts else None
    if in_channels and latent and in_channels != 4 * latent:
        if latent == 16:          # FLUX's own VAE: the transformer is the odd one (Fill, Canny, Depth …)
            problems.append(("transformer", f"{core.name} takes {in_channels} input channels (FLUX.1-dev takes "
                                            f"64; {in_channels} is a FLUX.1 Fill, Canny or Depth model)"))
        else:
            family = " (a Stable Diffusion 1.x/2.x/SDXL VAE)" if latent == 4 else ""
            problems.append(("vae", f"{facts['vae'].name} has {latent} latent channels{family}; this FLUX transformer "
                                    f"takes {in_channels // 4} (FLUX's ae.safetensors)"))
    for part, key, own, what in (("clip_l", "pooled_projection_dim", "hidden_size", "CLIP-L"),
                                 ("t5xxl", "joint_attention_dim", "d_model", "T5-XXL")):
        wanted = core.sizes.get(key)
        width = facts[part].sizes.get(own) if part in facts else None
        if wanted and width and wanted != width:
            problems.append((part, f"{facts[part].name} is {width} wide; this FLUX transformer takes {what}'s "
                                   f"{wanted}"))
    return problems


@dataclass(frozen=True)
class InstantCharacterFiles:
    flux: FluxFiles
    siglip: Path          # Hugging Face folder (google/siglip-so400m-patch14-384)
    dinov2: Path          # Hugging Face folder (facebook/dinov2-giant)
    adapter: Path         # instantcharacter_ip-adapter.bin or its .safetensors conversion
    clip_tokenizer: Path  # used when the diffusers folder (if any) has no tokenizer/ of its own
    t5_tokenizer: Path    # likewise tokenizer_2/

    def check(self) -> None:
        self.flux.check()
        for name, folder in (("SigLIP", self.siglip), ("DINOv2", self.dinov2)):
            if not (Path(folder) / "config.json").is_file():
                raise ModelFileError(f"{name}: {folder} is not a Hugging Face model folder (no config.json)")
        if not Path(self.adapter).is_file():
            raise ModelFileError(f"InstantCharacter adapter: {self.adapter} does not exist")
        problem = adapter_problem(self.adapter)
        if problem:
            raise ModelFileError(f"InstantCharacter adapter: {problem}")

    def tokenizer_folders(self) -> tuple[Path, Path]:
        """The diffusers folder's own tokenizer/ and tokenizer_2/ where it has them, else ComfyUI's copies."""
        return (_own_folder(self.flux.folder, "tokenizer") or Path(self.clip_tokenizer),
                _own_folder(self.flux.folder, "tokenizer_2") or Path(self.t5_tokenizer))


def _own_folder(folder: Path | None, name: str) -> Path | None:
    if folder is None:
        return None
    candidate = Path(folder) / name
    return candidate if candidate.is_dir() and any(candidate.iterdir()) else None


def adapter_problem(path: Path | str) -> str | None:
    """What is wrong with an InstantCharacter adapter file, from its header (None: fine, or unknown)."""
    header = kinds.read_header(path, "InstantCharacter adapter")
    if header is None:
        return None
    kind = kinds.identify(header)
    if kind.label != "the InstantCharacter adapter":
        return (f"{Path(path).name} is {kind.label}; choose instantcharacter_ip-adapter.bin from "
                "Tencent/InstantCharacter")
    return None


def flux_scheduler_config(folder: Path | None) -> dict:
    """The diffusers folder's scheduler/scheduler_config.json where it has one, else the shipped one."""
    own = Path(folder) / "scheduler" / "scheduler_config.json" if folder is not None else None
    config = json.loads(own.read_text()) if own is not None and own.is_file() else shipped_config("flux_scheduler.json")
    return {k: v for k, v in config.items() if not k.startswith("_")}


def load_flux(files: FluxFiles, dtype: torch.dtype, tokenizers) -> dict:
    """The components of a diffusers FluxPipeline: each part from its own file, else from the
    all-in-one checkpoint (only that part's tensors are read), else from the diffusers folder."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    loaders = {"transformer": (load_flux_transformer, FluxTransformer2DModel), "vae": (load_flux_vae, AutoencoderKL),
               "clip_l": (load_clip_l, CLIPTextModel), "t5xxl": (load_t5xxl, T5EncoderModel)}

    def load(part):
        how, path, prefix = files.source(part)
        read, cls = loaders[part]
        if how == "folder":
            return cls.from_pretrained(str(path.parent), subfolder=path.name, torch_dtype=dtype, local_files_only=True,
                                       low_cpu_mem_usage=False).eval().requires_grad_(False)
        return read(path, dtype, prefix)

    clip_tokenizer, t5_tokenizer = tokenizers
    return {
        "transformer": load("transformer"), "vae": load("vae"), "text_encoder": load("clip_l"),
        "text_encoder_2": load("t5xxl"),
        "scheduler": FlowMatchEulerDiscreteScheduler(**flux_scheduler_config(files.folder)),
        "tokenizer": clip_tokenizer,
        "tokenizer_2": t5_tokenizer,
    }


def load_image_encoders(siglip_folder: Path, dinov2_folder: Path, dtype: torch.dtype):
    from transformers import Dinov2Model, SiglipVisionModel

    try:
        siglip = SiglipVisionModel.from_pretrained(str(siglip_folder), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"SigLIP: cannot load {siglip_folder} ({str(exc)[:200]})") from None
    try:
        dinov2 = Dinov2Model.from_pretrained(str(dinov2_folder), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"DINOv2: cannot load {dinov2_folder} ({str(exc)[:200]})") from None
    return image_encoders(siglip, dinov2, siglip_folder, dinov2_folder)


def image_encoders(siglip, dinov2, siglip_folder: Path | None = None, dinov2_folder: Path | None = None):
    """The encoders with their image processors: a folder's own preprocessor config where it has one,
    else the shipped one (the released models' settings)."""
    from transformers import BitImageProcessor, SiglipImageProcessor

    from .features import DINOV2_SHALLOW_LAYERS, SIGLIP_SHALLOW_LAYERS, VIEW, check_encoder_depth
    from .pipeline import ImageEncoders

    def processor(cls, folder: Path | None, shipped: str):
        if folder is not None and (Path(folder) / "preprocessor_config.json").is_file():
            return cls.from_pretrained(str(folder), local_files_only=True)
        return cls(**{k: v for k, v in shipped_config(shipped).items() if k != "image_processor_type"})

    check_encoder_depth("SigLIP", siglip.config.num_hidden_layers, SIGLIP_SHALLOW_LAYERS)
    check_encoder_depth("DINOv2", dinov2.config.num_hidden_layers, DINOV2_SHALLOW_LAYERS)
    dinov2_processor = processor(BitImageProcessor, dinov2_folder, "dinov2_preprocessor.json")
    # the reference feeds DINOv2 the same 384² views as SigLIP
    dinov2_processor.crop_size = {"height": VIEW, "width": VIEW}
    dinov2_processor.size = {"shortest_edge": VIEW}
    return ImageEncoders(siglip.eval().requires_grad_(False),
                         processor(SiglipImageProcessor, siglip_folder, "siglip_preprocessor.json"),
                         dinov2.eval().requires_grad_(False), dinov2_processor)


def install_adapter(transformer, adapter, encoders, files_adapter: Path) -> None:
    """Check the adapter fits this FLUX and these encoders, then attach its attention processors."""
    from .features import EncoderError

    names = list(transformer.attn_processors)
    processors = list(adapter.processors)
    config = transformer.config
    first = processors[0]
    hidden = config.num_attention_heads * config.attention_head_dim
    name = Path(files_adapter).name
    if len(processors) != len(names):
        raise ModelFileError(f"InstantCharacter adapter: {name} has {len(processors)} attention layers; this FLUX "
                             f"transformer has {len(names)}")
    if first.to_k_ip.out_features != hidden or first.norm_ip_q.dim != config.attention_head_dim:
        raise ModelFileError(f"InstantCharacter adapter: {name} is for a transformer of width "
                             f"{first.to_k_ip.out_features}; this FLUX transformer has {hidden}")
    size = adapter.projector.size
    if size.resampler.output_dim != first.to_k_ip.in_features:
        raise ModelFileError(f"InstantCharacter adapter: {name}: projector output {size.resampler.output_dim} "
                             f"does not match its attention input {first.to_k_ip.in_features}")
    features = encoders.siglip.config.hidden_size + encoders.dinov2.config.hidden_size
    if features != size.feature_dim:
        raise EncoderError(f"the adapter expects image features of width {size.feature_dim} (SigLIP + DINOv2); "
                           f"the chosen encoders give {encoders.siglip.config.hidden_size} + "
                           f"{encoders.dinov2.config.hidden_size} = {features}")
    transformer.set_attn_processor(dict(zip(names, processors)))


WEIGHT_FORMATS = ("dtype", "fp8_e4m3fn", "nf4")


def full_precision_patterns() -> tuple[str, ...]:
    """Layers fp8 and NF4 leave in the compute dtype (names searched with these patterns): the
    subject-attention layers (small, and the adapter was trained with them in bf16), and the norms,
    embeddings and in/out projections diffusers keeps in layerwise casting."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    return (*DEFAULT_SKIP_MODULES_PATTERN, "processor")


def store_in_fp8(transformer, compute_dtype: torch.dtype) -> None:
    """The FLUX transformer's weights stay in fp8 and are cast to `compute_dtype` layer by layer as
    they run (half the VRAM of bf16)."""
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype,
                                         skip_modules_pattern=full_precision_patterns())


def import_bitsandbytes():
    try:
        import bitsandbytes
    except ImportError:
        raise ModelFileError("the NF4 weight format needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU; "
                             "choose fp8_e4m3fn or a GGUF file instead") from None
    return bitsandbytes


def store_in_nf4(transformer, compute_dtype: torch.dtype, device: torch.device) -> None:
    """The FLUX transformer's linear layers in bitsandbytes NF4 (4-bit NormalFloat, blocks of 64 with
    their own scale; a quarter of bf16's VRAM), dequantized to `compute_dtype` as they run. Each layer
    is quantized on `device` (the GPU's kernels are fast) and kept on the CPU until the memory mode
    places it."""
    bnb = import_bitsandbytes()
    kept = full_precision_patterns()
    linears = [(name, module) for name, module in transformer.named_modules()
               if type(module) is torch.nn.Linear and not any(re.search(p, name) for p in kept)]
    for name, linear in linears:
        quantized = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      compute_dtype=compute_dtype, quant_type="nf4", device="meta")
        quantized.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            quantized.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        quantized = quantized.to(device).to("cpu")
        parent, _, child = name.rpartition(".")
        setattr(transformer.get_submodule(parent) if parent else transformer, child, quantized)


def build_pipeline(files: InstantCharacterFiles, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, memory: str = "resident", weight_format: str = "dtype",
                   host=None):
    """Everything loaded, checked and assembled into an InstantCharacterPipeline. `weight_format`
    "fp8_e4m3fn" stores the FLUX transformer in fp8, "nf4" in bitsandbytes NF4 (both computed in
    `dtype`). `host`: a memory.DeviceHost that shares the device with other models (ComfyUI's model
    management)."""
    from diffusers import FluxPipeline

    from .adapter import build_adapter

    check_weight_format(weight_format)                 # before any weight loads
    files.check()
    tokenizers = load_tokenizers(*files.tokenizer_folders())
    adapter = build_adapter(read_state(files.adapter, "InstantCharacter adapter"), dtype)
    encoders = load_image_encoders(files.siglip, files.dinov2, dtype)
    flux = FluxPipeline(**load_flux(files.flux, dtype, tokenizers))
    install_adapter(flux.transformer, adapter, encoders, files.adapter)
    return assemble_pipeline(flux, encoders, adapter, device, dtype, memory, weight_format, host)


def check_weight_format(weight_format: str) -> None:
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight format {weight_format!r} is not one of {', '.join(WEIGHT_FORMATS)}")
    if weight_format == "nf4":
        import_bitsandbytes()


def assemble_pipeline(flux, encoders, adapter, device: torch.device | str, dtype: torch.dtype, memory: str,
                      weight_format: str = "dtype", host=None):
    """Loaded parts (a FluxPipeline with the adapter installed, the image encoders, the adapter) in
    the weight format and memory mode: the pipeline. benchmarks/ builds full-size parts for it too."""
    from ..memory import apply_memory_mode
    from .pipeline import InstantCharacterPipeline

    check_weight_format(weight_format)
    device = torch.device(device)
    if weight_format != "dtype" and any(is_quantized(p) for p in flux.transformer.parameters()):
        raise ModelFileError(f"{weight_format}: the FLUX transformer is a GGUF file, which is already quantized")
    if weight_format == "fp8_e4m3fn":
        store_in_fp8(flux.transformer, dtype)
    elif weight_format == "nf4":
        store_in_nf4(flux.transformer, dtype, device)
    components = [flux.transformer, flux.vae, flux.text_encoder, flux.text_encoder_2, encoders.siglip,
                  encoders.dinov2, adapter.projector]
    placement = apply_memory_mode(memory, device, components, streamed=(flux.transformer, flux.text_encoder_2),
                                  host=host)
    return InstantCharacterPipeline(flux=flux, encoders=encoders, adapter=adapter, device=device, dtype=dtype,
                                    placement=placement)
