"""Tiny InstantCharacter models with deterministic random weights, saved in the real file layouts.

Every component starts from the pack's shipped real-size config with only the sizes shrunk, and
its weights are filled from a generator seeded per tensor name (independent of how a library
version initialises or orders modules), so the same model is rebuilt bit for bit anywhere.

Layouts written (what users have):
- a diffusers folder (model_index.json, transformer/, vae/, text_encoder(_2)/, tokenizer(_2)/, scheduler/);
- ComfyUI single files: the FLUX transformer in the BFL layout, ae.safetensors in the original
  (LDM) VAE layout, clip_l and t5xxl with Hugging Face key names — converted with ComfyUI's own
  key maps (comfy.utils.flux_to_diffusers, comfy.diffusers_convert), an oracle independent of the pack;
- the same four in one all-in-one checkpoint, as Comfy-Org's flux1-dev-fp8.safetensors holds them
  (`model.diffusion_model.*`, `vae.*`, `text_encoders.clip_l.*`, `text_encoders.t5xxl.*`; the key
  set is checked against ComfyUI's own save layout in tests/test_model_files.py);
- SigLIP and DINOv2 as Hugging Face folders;
- the adapter in the official format (`image_proj` / `ip_adapter`, .bin) and as flat .safetensors.

The vocabularies are full size, so the tokenizers ComfyUI ships drive these models unchanged.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from comfyui_server import comfyui_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "pipelines" / "local" / "instantcharacter" / "configs"

TRANSFORMER = {"num_layers": 2, "num_single_layers": 2, "attention_head_dim": 128, "num_attention_heads": 2,
               "in_channels": 16, "joint_attention_dim": 32, "pooled_projection_dim": 64}
# four blocks like the real VAE (8x downscale; ComfyUI's key map assumes four), 32 channels each
VAE = {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "latent_channels": 4, "sample_size": 64}
CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 1,
        "projection_dim": 64}
T5 = {"d_model": 32, "d_ff": 48, "d_kv": 8, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}
SIGLIP = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 27, "num_attention_heads": 2,
          "image_size": 384, "patch_size": 14}
DINOV2 = {"hidden_size": 32, "num_hidden_layers": 30, "num_attention_heads": 2, "mlp_ratio": 2,
          "image_size": 518, "patch_size": 14, "use_swiglu_ffn": True, "layerscale_value": 1.0}
# the projector: features 32 (SigLIP) + 32 (DINOv2); 64-wide heads as in the official file
PROJECTOR = {"feature_dim": 64, "feature_layers": 2, "resampler_dim": 128, "resampler_depth": 2, "num_queries": 16,
             "timestep_dim": 32}
SEED = 20251129


def shipped_config(name: str, **sizes) -> dict:
    config = json.loads((CONFIGS / name).read_text())
    config.update(sizes)
    return config


def fill(module: torch.nn.Module, seed: int = SEED) -> torch.nn.Module:
    """Deterministic weights: each tensor from a generator seeded by (seed, its name). Matrices are
    N(0, 1/fan_in); 1-d weights and scales 1 + N(0, 0.1²); biases N(0, 0.1²)."""
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue                          # index buffers (position ids) keep their values
            generator = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
            values = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            if tensor.ndim >= 2:
                values /= max(1, tensor[0].numel()) ** 0.5
            elif name.endswith(("weight", "scale", ".g")) and "embedding" not in name:
                values = 1 + 0.1 * values
            else:
                values = 0.1 * values
            tensor.copy_(values.to(tensor.dtype))
    return module.eval()


# ---- components ------------------------------------------------------------------------------

def transformer():
    from diffusers import FluxTransformer2DModel

    config = {k: v for k, v in shipped_config("flux_transformer.json", **TRANSFORMER).items() if not k.startswith("_")}
    return fill(FluxTransformer2DModel(**config))


def vae():
    from diffusers import AutoencoderKL

    config = {k: v for k, v in shipped_config("flux_vae.json", **VAE).items() if not k.startswith("_")}
    return fill(AutoencoderKL(**config))


def clip_text():
    from transformers import CLIPTextConfig, CLIPTextModel

    return fill(CLIPTextModel(CLIPTextConfig(**shipped_config("clip_l.json", **CLIP))))


def t5():
    from transformers import T5Config, T5EncoderModel

    model = fill(T5EncoderModel(T5Config(**shipped_config("t5xxl.json", **T5))))
    model.encoder.embed_tokens = model.shared          # tied, as in the real checkpoints
    return model


def siglip():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return fill(SiglipVisionModel(SiglipVisionConfig(**SIGLIP)))


def dinov2():
    from transformers import Dinov2Config, Dinov2Model

    return fill(Dinov2Model(Dinov2Config(**DINOV2)))


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = {k: v for k, v in json.loads((CONFIGS / "flux_scheduler.json").read_text()).items() if not k.startswith("_")}
    return FlowMatchEulerDiscreteScheduler(**config)


def adapter_state(processors: int | None = None, seed: int = SEED) -> dict:
    """The official layout: {"image_proj": {...}, "ip_adapter": {"<i>.to_k_ip.weight": ...}}."""
    from pipelines.local.adapter_files import ResamplerSize
    from pipelines.local.instantcharacter.adapter import ProjectorSize, SubjectAttnProcessor, SubjectProjector

    size = ProjectorSize(
        feature_dim=PROJECTOR["feature_dim"], cross_attention_dim=PROJECTOR["feature_dim"],
        feature_heads=PROJECTOR["feature_dim"] // 64, feature_layers=PROJECTOR["feature_layers"],
        feature_ff_inner=4 * PROJECTOR["feature_dim"], mlp_hidden=2 * PROJECTOR["feature_dim"],
        resampler=ResamplerSize(dim=PROJECTOR["resampler_dim"], depth=PROJECTOR["resampler_depth"],
                                heads=PROJECTOR["resampler_dim"] // 64, num_queries=PROJECTOR["num_queries"],
                                embedding_dim=PROJECTOR["feature_dim"], output_dim=TRANSFORMER["joint_attention_dim"],
                                ff_inner=4 * PROJECTOR["resampler_dim"], timestep_dim=PROJECTOR["timestep_dim"]))
    projector = fill(SubjectProjector(size), seed)
    count = processors or TRANSFORMER["num_layers"] + TRANSFORMER["num_single_layers"]
    hidden = TRANSFORMER["attention_head_dim"] * TRANSFORMER["num_attention_heads"]
    attention = fill(torch.nn.ModuleList([
        SubjectAttnProcessor(hidden, TRANSFORMER["joint_attention_dim"], TRANSFORMER["attention_head_dim"])
        for _ in range(count)]), seed + 1)
    return {"image_proj": projector.state_dict(), "ip_adapter": attention.state_dict()}


# ---- tokenizers: ComfyUI's own copies --------------------------------------------------------

def comfy_tokenizer_dirs() -> tuple[Path, Path]:
    comfy = comfyui_dir() / "ComfyUI" / "comfy"
    return comfy / "sd1_tokenizer", comfy / "text_encoders" / "t5_tokenizer"


def tokenizers():
    from pipelines.local.instantcharacter.loading import load_tokenizers

    return load_tokenizers(*comfy_tokenizer_dirs())


# ---- layouts ---------------------------------------------------------------------------------

@dataclass
class TinyFiles:
    root: Path
    diffusers_folder: Path
    transformer_file: Path
    vae_file: Path
    clip_file: Path
    t5_file: Path
    siglip_folder: Path
    dinov2_folder: Path
    adapter_bin: Path
    adapter_safetensors: Path
    checkpoint_file: Path          # the all-in-one checkpoint of the same weights


def _comfy_modules():
    path = str(comfyui_dir() / "ComfyUI")
    if path not in sys.path:
        sys.path.append(path)
    import comfy.diffusers_convert
    import comfy.utils

    return comfy.utils, comfy.diffusers_convert


def bfl_transformer_state(model) -> dict:
    """A diffusers FLUX transformer's weights in the BFL layout (as flux1-dev.safetensors holds them),
    through ComfyUI's own diffusers→BFL key map. The q/k RMSNorm weights are named `*_norm.scale`
    as in BFL's files, whatever the map says: ComfyUI since 2026-02 ("Use torch RMSNorm for flux
    models") maps them to `*_norm.weight`, its own module name, not the name in the released files."""
    comfy_utils, _ = _comfy_modules()
    config = model.config
    key_map = comfy_utils.flux_to_diffusers({"depth": config.num_layers, "depth_single_blocks": config.num_single_layers,
                                             "hidden_size": config.num_attention_heads * config.attention_head_dim},
                                            output_prefix="")
    source = model.state_dict()
    pieces: dict[str, list] = {}
    out = {}
    for diffusers_key, target in key_map.items():
        if diffusers_key not in source:
            continue
        tensor = source[diffusers_key]
        if isinstance(target, str):
            out[target] = tensor.clone()
        elif len(target) == 3 and callable(target[2]):         # (key, None, fix) — stored swapped
            out[target[0]] = target[2](tensor.clone())
        else:                                                   # (key, (dim, start, size)) — a slice of a fused tensor
            name, (dim, start, size) = target[0], target[1]
            pieces.setdefault(name, []).append((start, tensor))
    for name, parts in pieces.items():
        out[name] = torch.cat([tensor for _, tensor in sorted(parts, key=lambda part: part[0])], dim=0)
    missing = set(source) - set(key_map)
    assert not missing, f"ComfyUI's map lacks {sorted(missing)[:3]}"
    return {re.sub(r"_norm\.weight$", "_norm.scale", key): value for key, value in out.items()}


def scaled_fp8(state: dict) -> dict:
    """ComfyUI's "fp8 scaled" layout: each matrix stored as float8(weight / scale) beside its scale."""
    out = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight") and "shared" not in key and "relative_attention" not in key:
            scale = value.abs().max().float() / 448.0
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key[: -len(".weight")] + ".scale_weight"] = scale.reshape(1)
        else:
            out[key] = value
    return out


def style_lora(rank: int = 4, seed: int = SEED) -> dict:
    """A kohya-format FLUX LoRA on a few BFL layers (fused q/k/v included) and one CLIP-L layer."""
    hidden = TRANSFORMER["attention_head_dim"] * TRANSFORMER["num_attention_heads"]
    shapes = {"lora_unet_double_blocks_0_img_attn_qkv": (3 * hidden, hidden),
              "lora_unet_single_blocks_1_linear1": (7 * hidden, hidden),
              "lora_te1_text_model_encoder_layers_0_mlp_fc1": (CLIP["intermediate_size"], CLIP["hidden_size"])}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out_features, in_features) in shapes.items():
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * 0.3
        state[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.3
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    return state


def write_gguf(state: dict, path: Path) -> None:
    """A GGUF file as the FLUX GGUF conversions hold it: BFL names, matrices in Q8_0 (where a row
    splits into Q8_0 blocks), the rest in F32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "flux")
    for key, value in state.items():
        array = value.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(key, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(key, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# the prefixes of ComfyUI's Flux checkpoint (supported_models.Flux: unet, vae, text encoders; the
# text encoders' own models add "transformer.", their logit_scale sits beside it)
CHECKPOINT_PREFIXES = {"transformer": "model.diffusion_model.", "vae": "vae.", "clip_l": "text_encoders.clip_l.",
                       "t5xxl": "text_encoders.t5xxl."}


def all_in_one_state(transformer_state: dict, vae_state: dict, clip_state: dict, t5_state: dict) -> dict:
    """Four single files' tensors as one FLUX all-in-one checkpoint. ComfyUI saves CLIP-L's text
    projection and a logit scale per text encoder too (FLUX uses neither); they are written as well."""
    out = {CHECKPOINT_PREFIXES["transformer"] + k: v for k, v in transformer_state.items()}
    out.update({CHECKPOINT_PREFIXES["vae"] + k: v for k, v in vae_state.items()})
    clip = CHECKPOINT_PREFIXES["clip_l"]
    out.update({f"{clip}transformer.{k}": v for k, v in clip_state.items()})
    width = clip_state["text_model.embeddings.token_embedding.weight"].shape[1]
    out[f"{clip}transformer.text_projection.weight"] = torch.eye(width, dtype=torch.float32)
    out[f"{clip}logit_scale"] = torch.tensor(4.6055)
    t5 = CHECKPOINT_PREFIXES["t5xxl"]
    out.update({f"{t5}transformer.{k}": v for k, v in t5_state.items()})
    out[f"{t5}logit_scale"] = torch.tensor(4.6055)
    return out


def ldm_vae_state(model) -> dict:
    _, diffusers_convert = _comfy_modules()
    return diffusers_convert.convert_vae_state_dict(model.state_dict())


def build_tiny_files(root: Path) -> TinyFiles:
    """Write every layout under `root` (a few MB); returns where each file is."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    parts = {"transformer": transformer(), "vae": vae(), "text_encoder": clip_text(), "text_encoder_2": t5(),
             "scheduler": scheduler()}
    clip_tokenizer, t5_tokenizer = tokenizers()
    folder = root / "diffusers" / "FLUX.1-dev-tiny"
    FluxPipeline(tokenizer=clip_tokenizer, tokenizer_2=t5_tokenizer, **parts).save_pretrained(folder,
                                                                                            safe_serialization=True)
    singles = root / "single"
    singles.mkdir(exist_ok=True)

    def contiguous(state):
        return {k: v.contiguous() for k, v in state.items()}

    files = dict(
        transformer_file=singles / "flux1-dev-tiny.safetensors",
        vae_file=singles / "ae-tiny.safetensors",
        clip_file=singles / "clip_l-tiny.safetensors",
        t5_file=singles / "t5xxl-tiny.safetensors",
    )
    save_file(contiguous(bfl_transformer_state(parts["transformer"])), files["transformer_file"])
    save_file(contiguous(ldm_vae_state(parts["vae"])), files["vae_file"])
    # ComfyUI's clip_l.safetensors: Hugging Face names under "text_model."
    clip_state = {key if key.startswith("text_model.") else f"text_model.{key}": value
                  for key, value in parts["text_encoder"].state_dict().items() if "position_ids" not in key}
    save_file(contiguous(clip_state), files["clip_file"])
    t5_state = {k: v for k, v in parts["text_encoder_2"].state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(contiguous(t5_state), files["t5_file"])
    # the formats users download: fp16 / fp8 "scaled" T5, bf16 / fp8 transformer
    save_file(contiguous({k: v.to(torch.float16) for k, v in t5_state.items()}), singles / "t5xxl-tiny_fp16.safetensors")
    save_file(contiguous(scaled_fp8(t5_state)), singles / "t5xxl-tiny_fp8_e4m3fn_scaled.safetensors")
    bfl = bfl_transformer_state(parts["transformer"])
    save_file(contiguous({k: v.to(torch.bfloat16) for k, v in bfl.items()}), singles / "flux1-dev-tiny-bf16.safetensors")
    save_file(contiguous({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in bfl.items()}),
              singles / "flux1-dev-tiny-fp8_e4m3fn.safetensors")
    write_gguf(bfl, singles / "flux1-dev-tiny-Q8_0.gguf")
    files["checkpoint_file"] = singles / "flux1-dev-tiny-allinone.safetensors"
    save_file(contiguous(all_in_one_state(bfl, ldm_vae_state(parts["vae"]), clip_state, t5_state)),
              files["checkpoint_file"])
    # as Comfy-Org's flux1-dev-fp8.safetensors: transformer and T5 in fp8, CLIP-L in fp16, the VAE in bf16
    fp8 = all_in_one_state({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in bfl.items()},
                           {k: v.to(torch.bfloat16) for k, v in ldm_vae_state(parts["vae"]).items()},
                           {k: v.to(torch.float16) for k, v in clip_state.items()},
                           {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in t5_state.items()})
    save_file(contiguous(fp8), singles / "flux1-dev-tiny-allinone-fp8.safetensors")

    encoders = root / "clip_vision"
    siglip_folder, dinov2_folder = encoders / "siglip-tiny", encoders / "dinov2-tiny"
    siglip().save_pretrained(siglip_folder)
    dinov2().save_pretrained(dinov2_folder)
    shutil.copy(CONFIGS / "siglip_preprocessor.json", siglip_folder / "preprocessor_config.json")
    shutil.copy(CONFIGS / "dinov2_preprocessor.json", dinov2_folder / "preprocessor_config.json")

    loras = root / "loras"
    loras.mkdir(exist_ok=True)
    save_file(style_lora(), loras / "style-tiny.safetensors")

    adapters = root / "instantcharacter"
    adapters.mkdir(exist_ok=True)
    state = adapter_state()
    torch.save(state, adapters / "instantcharacter-tiny.bin")
    flat = {f"{part}.{key}": value.contiguous() for part, values in state.items() for key, value in values.items()}
    save_file(flat, adapters / "instantcharacter-tiny.safetensors")
    return TinyFiles(root=root, diffusers_folder=folder, siglip_folder=siglip_folder, dinov2_folder=dinov2_folder,
                     adapter_bin=adapters / "instantcharacter-tiny.bin",
                     adapter_safetensors=adapters / "instantcharacter-tiny.safetensors", **files)


def copy_into(places: dict[Path, Path]) -> None:
    """Copy each file or folder to its place, creating the folders on the way."""
    for source, target in places.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy(source, target)


def install_into_models(files: TinyFiles, models: Path) -> dict[str, str]:
    """Put the tiny files where a ComfyUI user keeps theirs (the encoders nested, as Hugging Face
    names them); returns the names the loader node lists."""
    places = {
        files.diffusers_folder: models / "diffusers" / "FLUX.1-dev-tiny",
        files.transformer_file: models / "diffusion_models" / "flux1-dev-tiny.safetensors",
        files.transformer_file.parent / "flux1-dev-tiny-Q8_0.gguf": models / "diffusion_models" / "flux1-dev-tiny-Q8_0.gguf",
        files.vae_file: models / "vae" / "ae-tiny.safetensors",
        files.clip_file: models / "text_encoders" / "clip_l-tiny.safetensors",
        files.t5_file: models / "text_encoders" / "t5xxl-tiny.safetensors",
        files.siglip_folder: models / "clip_vision" / "google" / "siglip-tiny",
        files.dinov2_folder: models / "clip_vision" / "facebook" / "dinov2-tiny",
        files.adapter_bin: models / "instantcharacter" / "instantcharacter-tiny.bin",
        files.root / "loras" / "style-tiny.safetensors": models / "loras" / "style-tiny.safetensors",
        files.checkpoint_file: models / "checkpoints" / "flux1-dev-tiny-allinone.safetensors",
    }
    copy_into(places)
    # once more under the real files' names, which the shipped workflows name
    copy_into({files.transformer_file: models / "diffusion_models" / "flux1-dev.safetensors",
               files.vae_file: models / "vae" / "ae.safetensors",
               files.clip_file: models / "text_encoders" / "clip_l.safetensors",
               files.t5_file: models / "text_encoders" / "t5xxl_fp16.safetensors",
               files.siglip_folder: models / "clip_vision" / "siglip-so400m-patch14-384",
               files.dinov2_folder: models / "clip_vision" / "dinov2-giant",
               files.adapter_bin: models / "instantcharacter" / "instantcharacter_ip-adapter.bin"})
    return {"flux_folder": "FLUX.1-dev-tiny (diffusers folder)", "flux_file": "flux1-dev-tiny.safetensors",
            "flux_gguf": "flux1-dev-tiny-Q8_0.gguf",
            "vae": "ae-tiny.safetensors", "clip_l": "clip_l-tiny.safetensors", "t5xxl": "t5xxl-tiny.safetensors",
            "siglip": "google/siglip-tiny", "dinov2": "facebook/dinov2-tiny", "adapter": "instantcharacter-tiny.bin",
            "lora": "style-tiny.safetensors",
            "flux_checkpoint": "flux1-dev-tiny-allinone.safetensors (all-in-one checkpoint)"}


# ---- native InstantCharacter: a FLUX.1 at the width ComfyUI's own loaders take -------------------------
# ComfyUI's FLUX detection hard-codes 24 heads × 128 (and the VAE loader FLUX's channel widths), so the
# files its UNETLoader / VAELoader / CheckpointLoaderSimple load are FLUX.1's width: one double and one
# single block (≈ 0.55 B parameters, bf16 on disk) and the VAE at its real size (≈ 84 M). Text width and
# pooled width stay the tiny ones (ComfyUI reads both from the weights), so the conditioning a test node
# makes fits, and the projector is the tiny adapter's (the tiny SigLIP / DINOv2 feed it).
NATIVE_TRANSFORMER = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 128, "num_attention_heads": 24,
                      "in_channels": 64, "joint_attention_dim": TRANSFORMER["joint_attention_dim"],
                      "pooled_projection_dim": TRANSFORMER["pooled_projection_dim"]}
NATIVE_NAMES = {"flux": "flux1-dev-native-tiny.safetensors", "vae": "ae-native.safetensors",
                "lora": "flux-native-tiny-lora.safetensors", "adapter": "instantcharacter-native-tiny.bin",
                "checkpoint": "flux1-dev-native-tiny-allinone.safetensors", "gguf": "flux1-dev-native-tiny-Q8_0.gguf",
                "scaled_fp8": "flux1-dev-native-tiny-fp8-scaled.safetensors"}
# where a ComfyUI user keeps each (folder under models/)
NATIVE_FOLDERS = {"flux": "diffusion_models", "vae": "vae", "lora": "loras", "adapter": "instantcharacter",
                  "checkpoint": "checkpoints", "gguf": "diffusion_models", "scaled_fp8": "diffusion_models"}


def _filled_on_cpu(make) -> torch.nn.Module:
    """A module built without its own initialisation (made on the meta device, then storage on the
    CPU), filled as fill() does: big modules build in seconds, not minutes."""
    with torch.device("meta"):
        module = make()
    return fill(module.to_empty(device="cpu"))


def native_transformer():
    from diffusers import FluxTransformer2DModel

    config = {k: v for k, v in shipped_config("flux_transformer.json", **NATIVE_TRANSFORMER).items()
              if not k.startswith("_")}
    return _filled_on_cpu(lambda: FluxTransformer2DModel(**config))


def native_vae():
    from diffusers import AutoencoderKL

    config = {k: v for k, v in shipped_config("flux_vae.json").items() if not k.startswith("_")}
    return _filled_on_cpu(lambda: AutoencoderKL(**config))


def native_lora(rank: int = 4, seed: int = SEED) -> dict:
    """A kohya-format LoRA on the native transformer's fused q/k/v and single-block linear1."""
    hidden = NATIVE_TRANSFORMER["attention_head_dim"] * NATIVE_TRANSFORMER["num_attention_heads"]
    shapes = {"lora_unet_double_blocks_0_img_attn_qkv": (3 * hidden, hidden),
              "lora_unet_single_blocks_0_linear1": (7 * hidden, hidden)}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out_features, in_features) in shapes.items():
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) / in_features ** 0.5
        state[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.5
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    return state


def native_adapter_state(seed: int = SEED) -> dict:
    """The official layout for the native transformer: the tiny projector, one subject processor per
    block at width 3072 (128-wide heads)."""
    from pipelines.local.instantcharacter.adapter import SubjectAttnProcessor

    hidden = NATIVE_TRANSFORMER["attention_head_dim"] * NATIVE_TRANSFORMER["num_attention_heads"]
    count = NATIVE_TRANSFORMER["num_layers"] + NATIVE_TRANSFORMER["num_single_layers"]
    attention = fill(torch.nn.ModuleList([
        SubjectAttnProcessor(hidden, NATIVE_TRANSFORMER["joint_attention_dim"], NATIVE_TRANSFORMER["attention_head_dim"])
        for _ in range(count)]), seed + 1)
    return {"image_proj": adapter_state(seed=seed)["image_proj"], "ip_adapter": attention.state_dict()}


def scaled_fp8_state(bfl: dict) -> dict:
    """The transformer as the "fp8 scaled" FLUX files are written (e.g. Comfy-Org's flux1-dev-fp8-scaled):
    each block's linear weights in float8_e4m3fn divided by a per-tensor scale stored beside them as
    `<layer>.scale_weight`, the other tensors as they were, and the empty `scaled_fp8` marker."""
    state = {}
    for key, value in bfl.items():
        if key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(".weight") and value.ndim == 2:
            scale = value.float().abs().max() / torch.finfo(torch.float8_e4m3fn).max
            state[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            state[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            state[key] = value
    state["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return state


def build_native_files(root: Path, gguf: bool = False, scaled_fp8: bool = False) -> dict[str, Path]:
    """The native InstantCharacter files under `root` (≈ 1.5 GB, under a minute); the name → path of each
    (keys of NATIVE_NAMES). The all-in-one checkpoint holds the transformer and the VAE only (no text
    encoders: CheckpointLoaderSimple then gives no CLIP, which these tests do not use). The GGUF and the
    scaled fp8 copy of the transformer only when asked for."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    optional = {"gguf": gguf, "scaled_fp8": scaled_fp8}
    paths = {key: root / name for key, name in NATIVE_NAMES.items() if optional.get(key, True)}
    bfl = {k: v.to(torch.bfloat16).contiguous() for k, v in bfl_transformer_state(native_transformer()).items()}
    ae = {k: v.to(torch.bfloat16).contiguous() for k, v in ldm_vae_state(native_vae()).items()}
    save_file(bfl, paths["flux"])
    save_file(ae, paths["vae"])
    save_file(native_lora(), paths["lora"])
    torch.save(native_adapter_state(), paths["adapter"])
    save_file({**{CHECKPOINT_PREFIXES["transformer"] + k: v for k, v in bfl.items()},
               **{CHECKPOINT_PREFIXES["vae"] + k: v for k, v in ae.items()}}, paths["checkpoint"])
    if gguf:
        write_gguf(bfl, paths["gguf"])
    if scaled_fp8:
        save_file(scaled_fp8_state(bfl), paths["scaled_fp8"])
    return paths


def link_native_files(paths: dict[str, Path], models: Path) -> dict[str, str]:
    """Symlink the native files into a ComfyUI's model folders (ComfyUI lists a folder anew when it
    changes); returns the name each loader lists."""
    for key, path in paths.items():
        target = models / NATIVE_FOLDERS[key] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(path)
    return {key: path.name for key, path in paths.items()}


def native_workflow_on_tiny_files(prompt: dict, names: dict[str, str]) -> dict:
    """The shipped native InstantCharacter workflow (API format) made to run on the native tiny files
    (`names`: link_native_files' answer) in a test ComfyUI: its loaders pointed at them, DualCLIPLoader +
    CLIPTextEncode replaced by the test-only TestFluxConditioning node (DualCLIPLoader always builds the
    full-size T5-XXL), a 64×64 latent and two steps. Everything else runs as shipped."""
    out = json.loads(json.dumps(prompt))
    for node_id, node in list(out.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "DualCLIPLoader":
            del out[node_id]
        elif kind == "CLIPTextEncode":
            out[node_id] = {"class_type": "TestFluxConditioning", "inputs": {"seed": 1, "guidance": 3.5}}
        elif kind == "UNETLoader":
            inputs["unet_name"] = names["flux"]
        elif kind == "VAELoader":
            inputs["vae_name"] = names["vae"]
        elif kind == "CharIDLoadInstantCharacterAdapter":
            inputs["adapter"] = names["adapter"]
        elif kind == "EmptySD3LatentImage":
            inputs.update(width=64, height=64)
        elif kind == "KSampler":
            inputs["steps"] = 2
    return out
