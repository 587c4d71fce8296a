"""Building the local InstantCharacter pipeline from the files a ComfyUI user already has — nothing
is ever fetched from a hub.

FLUX.1-dev comes from a diffusers folder, or from single files: the transformer in the BFL layout
(bf16, or fp8 with or without ComfyUI's weight scales), `ae.safetensors` in the original VAE layout,
`clip_l` and `t5xxl` with Hugging Face key names (fp16, or fp8 "scaled"). Every architecture size is
read from the weights (as ComfyUI detects models); the shipped real-size configs supply the rest
(activations, epsilons, scheduler). SigLIP and DINOv2 are Hugging Face folders. Tokenizers are read
from the copies ComfyUI ships (the caller passes their folders).

Every problem is raised as `ModelFileError` naming the file and what is wrong, before the
expensive part of a load where it can be checked early.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

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


def load_flux_transformer(path: Path | str, dtype: torch.dtype):
    """A BFL-layout file: .safetensors (bf16, fp16, fp8, fp8 "scaled") or .gguf. GGUF weights stay
    quantized in memory and are dequantized layer by layer as they run (diffusers' GGUF layers)."""
    from diffusers import FluxTransformer2DModel

    path = Path(path)
    state = strip_prefix(read_state(path, "FLUX transformer"), ("model.diffusion_model.",))
    config = flux_config_from_bfl(state, path)
    if path.suffix == ".gguf":
        state = {key: value if is_quantized(value) else value.to(dtype) for key, value in state.items()}
    else:
        state = unscale_fp8(state, dtype)
    converted = flux_bfl_to_diffusers(state, config)
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
        if path.suffix == ".gguf":
            from diffusers.quantizers.gguf.utils import _replace_with_gguf_linear

            _replace_with_gguf_linear(model, dtype, converted)
    return load_into(model, converted, "FLUX transformer", path)


# ---- VAE (original layout) ---------------------------------------------------------------------

def load_flux_vae(path: Path | str, dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = Path(path)
    what = "FLUX VAE"
    state = strip_prefix(read_state(path, what), ("first_stage_model.", "vae."))
    blocks = count(state, r"encoder\.down\.(\d+)\.")
    if not blocks:
        raise ModelFileError(f"{what}: {path.name} has no encoder blocks; it is not a VAE file")
    config = {k: v for k, v in shipped_config("flux_vae.json").items() if not k.startswith("_")}
    config.update(
        block_out_channels=[need(state, f"encoder.down.{i}.block.0.conv1.weight", what, path).shape[0]
                            for i in range(blocks)],
        down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
        layers_per_block=count(state, r"encoder\.down\.0\.block\.(\d+)\."),
        latent_channels=need(state, "decoder.conv_in.weight", what, path).shape[1])
    converted = convert_ldm_vae_checkpoint({k: v.to(dtype) for k, v in state.items()}, config)
    with torch.device("meta"):
        model = AutoencoderKL(**config)
    return load_into(model, converted, what, path)


# ---- text encoders (Hugging Face key names) -------------------------------------------------------

def load_clip_l(path: Path | str, dtype: torch.dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    what = "CLIP-L text encoder"
    # files carry Hugging Face names with the "text_model." prefix; some newer exports drop it
    state = strip_prefix(unscale_fp8(read_state(path, what), dtype), ("text_model.",))
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


def load_t5xxl(path: Path | str, dtype: torch.dtype):
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    what = "T5-XXL text encoder"
    state = unscale_fp8(read_state(path, what), dtype)
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

@dataclass(frozen=True)
class FluxFiles:
    """FLUX.1-dev: a diffusers folder, single files, or a folder with some parts replaced by files."""

    folder: Path | None = None
    transformer: Path | None = None
    vae: Path | None = None
    clip_l: Path | None = None
    t5xxl: Path | None = None

    def check(self) -> None:
        """Before any weight loads: every part has a source, and each source exists."""
        for part in ("transformer", "vae", "clip_l", "t5xxl"):
            file = getattr(self, part)
            if file is None and self.folder is None:
                raise ModelFileError(f"FLUX: no {part} file chosen and no diffusers folder to take it from")
            if file is not None and not Path(file).is_file():
                raise ModelFileError(f"FLUX {part}: {file} does not exist")
        if self.folder is not None:
            index = Path(self.folder) / "model_index.json"
            if not index.is_file():
                raise ModelFileError(f"FLUX diffusers folder {self.folder} has no model_index.json; choose the folder "
                                     "that holds transformer/, vae/, text_encoder/ …")


@dataclass(frozen=True)
class InstantCharacterFiles:
    flux: FluxFiles
    siglip: Path          # Hugging Face folder (google/siglip-so400m-patch14-384)
    dinov2: Path          # Hugging Face folder (facebook/dinov2-giant)
    adapter: Path         # instantcharacter_ip-adapter.bin or its .safetensors conversion
    clip_tokenizer: Path
    t5_tokenizer: Path

    def check(self) -> None:
        self.flux.check()
        for name, folder in (("SigLIP", self.siglip), ("DINOv2", self.dinov2)):
            if not (Path(folder) / "config.json").is_file():
                raise ModelFileError(f"{name}: {folder} is not a Hugging Face model folder (no config.json)")
        if not Path(self.adapter).is_file():
            raise ModelFileError(f"InstantCharacter adapter: {self.adapter} does not exist")


def load_flux(files: FluxFiles, dtype: torch.dtype, tokenizers) -> dict:
    """The components of a diffusers FluxPipeline."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    folder = Path(files.folder) if files.folder else None

    def from_folder(cls, subfolder):
        return cls.from_pretrained(str(folder), subfolder=subfolder, torch_dtype=dtype, local_files_only=True,
                                   low_cpu_mem_usage=False).eval().requires_grad_(False)

    scheduler_config = {k: v for k, v in shipped_config("flux_scheduler.json").items() if not k.startswith("_")}
    clip_tokenizer, t5_tokenizer = tokenizers
    return {
        "transformer": load_flux_transformer(files.transformer, dtype) if files.transformer
        else from_folder(FluxTransformer2DModel, "transformer"),
        "vae": load_flux_vae(files.vae, dtype) if files.vae else from_folder(AutoencoderKL, "vae"),
        "text_encoder": load_clip_l(files.clip_l, dtype) if files.clip_l else from_folder(CLIPTextModel, "text_encoder"),
        "text_encoder_2": load_t5xxl(files.t5xxl, dtype) if files.t5xxl
        else from_folder(T5EncoderModel, "text_encoder_2"),
        "scheduler": FlowMatchEulerDiscreteScheduler(**scheduler_config),
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
    tokenizers = load_tokenizers(files.clip_tokenizer, files.t5_tokenizer)
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
