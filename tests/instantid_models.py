"""Tiny InstantID models with deterministic random weights (see instantcharacter_models.fill), from
the pack's shipped real-size SDXL configs with only the sizes shrunk, saved in the layouts users
have: a diffusers SDXL folder, a single-file SDXL checkpoint (original layout, written with
ComfyUI's own key maps), the IdentityNet as a diffusers folder and as one .safetensors, and the face
adapter in the official `ip-adapter.bin` format (never committed: built at test time)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from instantcharacter_models import REPO_ROOT, _comfy_modules, fill
from instantcharacter_models import comfy_tokenizer_dirs, copy_into

CONFIGS = REPO_ROOT / "pipelines" / "local" / "instantid" / "configs"
# three levels like SDXL (the reference's face-region masks assume nine residuals at /8, /16, /32)
UNET = {"block_out_channels": [64, 64, 128], "attention_head_dim": [1, 1, 2], "transformer_layers_per_block": [1, 1, 1],
        "cross_attention_dim": 128, "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 64,
        "sample_size": 8}
CONTROLNET = {**UNET, "conditioning_embedding_out_channels": [16, 32, 32, 32]}
CONTROLNET.pop("sample_size")
VAE = {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "sample_size": 64}
CLIP_L = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 1,
          "projection_dim": 64}
CLIP_G = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 1,
          "projection_dim": 64}
RESAMPLER = {"dim": 128, "depth": 2, "num_queries": 16, "embedding_dim": 512}


def config(name: str, **sizes) -> dict:
    values = json.loads((CONFIGS / name).read_text())
    values.update(sizes)
    return {k: v for k, v in values.items() if not k.startswith("_")}


def unet():
    from diffusers import UNet2DConditionModel

    return fill(UNet2DConditionModel(**config("sdxl_unet.json", **UNET)))


def controlnet():
    from diffusers import ControlNetModel

    return fill(ControlNetModel(**config("identitynet.json", **CONTROLNET)), seed=5)


def vae():
    from diffusers import AutoencoderKL

    return fill(AutoencoderKL(**config("sdxl_vae.json", **VAE)))


def text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    first = fill(CLIPTextModel(CLIPTextConfig(**config("sdxl_text_encoder.json", **CLIP_L))))
    second = fill(CLIPTextModelWithProjection(CLIPTextConfig(**config("sdxl_text_encoder_2.json", **CLIP_G))), seed=3)
    return first, second


def scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config("sdxl_scheduler.json"))


def tokenizers():
    from pipelines.local.instantid.loading import load_sdxl_tokenizers

    return load_sdxl_tokenizers(comfy_tokenizer_dirs()[0])


def adapter_state(seed: int = 17) -> dict:
    """{"image_proj": resampler, "ip_adapter": {"<index>.to_k_ip.weight", …}} numbered over every
    UNet attention processor, attn1 included, as the official file is."""
    from pipelines.local.adapter_files import ResamplerSize
    from pipelines.local.instantid.adapter import FaceAttnProcessor, FaceResampler

    model = unet()
    size = ResamplerSize(dim=RESAMPLER["dim"], depth=RESAMPLER["depth"], heads=RESAMPLER["dim"] // 64,
                         num_queries=RESAMPLER["num_queries"], embedding_dim=RESAMPLER["embedding_dim"],
                         output_dim=UNET["cross_attention_dim"], ff_inner=4 * RESAMPLER["dim"])
    resampler = fill(FaceResampler(size), seed)
    attention = {}
    for index, (name, _) in enumerate(model.attn_processors.items()):
        if name.endswith("attn2.processor"):
            hidden = model.get_submodule(name[: -len(".processor")]).to_q.out_features
            processor = fill(FaceAttnProcessor(hidden, UNET["cross_attention_dim"]), seed + index)
            attention.update({f"{index}.{key}": value for key, value in processor.state_dict().items()})
    return {"image_proj": resampler.state_dict(), "ip_adapter": attention}


LCM_TARGETS = r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|proj_in|proj_out|ff\.net\.(0\.proj|2)|conv[12]|time_emb_proj|" \
              r"conv_shortcut|downsamplers\.0\.conv|upsamplers\.0\.conv)$"


def lcm_lora_state(model, rank: int = 4, alpha: float = 8.0, seed: int = 11) -> dict:
    """A LoRA in the LCM-LoRA's own layout: kohya names spelling the UNet's diffusers modules with
    underscores, a down/up pair and an alpha per layer, on attention, feed-forward and ResNet
    layers (3×3 convolutions included)."""
    import re

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in model.named_modules():
        if ".processor" in name or not re.search(LCM_TARGETS, name):
            continue
        base = "lora_unet_" + name.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down = torch.randn(rank, module.in_features, generator=generator) * 0.1
            up = torch.randn(module.out_features, rank, generator=generator) * 0.1
        elif isinstance(module, torch.nn.Conv2d):
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator) * 0.03
            up = torch.randn(module.out_channels, rank, 1, 1, generator=generator) * 0.1
        else:
            continue
        state.update({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up,
                      f"{base}.alpha": torch.tensor(alpha)})
    return state


# ---- the single-file SDXL checkpoint ------------------------------------------------------------

def comfy_unet_config(model) -> dict:
    """ComfyUI's description of a UNet (what its model detection derives), for its key map."""
    levels = len(model.config.block_out_channels)
    depth = list(model.config.transformer_layers_per_block)
    per_block = model.config.layers_per_block
    transformer_depth = [depth[i] if kind.startswith("CrossAttn") else 0
                         for i, kind in enumerate(model.config.down_block_types) for _ in range(per_block)]
    # a ControlNet has no up blocks: its key map then holds up-block names nobody looks up
    up_types = model.config.get("up_block_types") or [kind.replace("Down", "Up")
                                                       for kind in reversed(model.config.down_block_types)]
    up_depth = [depth[levels - 1 - i] if kind.startswith("CrossAttn") else 0
                for i, kind in enumerate(up_types) for _ in range(per_block + 1)]
    return {"num_res_blocks": [per_block] * levels, "channel_mult": [1] * levels,
            "transformer_depth": transformer_depth, "transformer_depth_output": list(reversed(up_depth)),
            "transformer_depth_middle": depth[-1]}


def ldm_checkpoint(unet_model, vae_model, clip_l, clip_g) -> dict:
    """An SDXL checkpoint as .safetensors files on Civitai hold it, made with ComfyUI's key maps."""
    comfy_utils, diffusers_convert = _comfy_modules()
    out = {}
    key_map = comfy_utils.unet_to_diffusers(comfy_unet_config(unet_model))
    for key, value in unet_model.state_dict().items():
        out["model.diffusion_model." + key_map[key]] = value
    for key, value in diffusers_convert.convert_vae_state_dict(vae_model.state_dict()).items():
        out["first_stage_model." + key] = value
    for key, value in clip_l.state_dict().items():
        if "position_ids" not in key:
            out["conditioner.embedders.0.transformer." + (key if key.startswith("text_model.") else f"text_model.{key}")] = value
    hf_g = {("transformer." + (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}")): v
            for k, v in clip_g.state_dict().items() if "position_ids" not in k}
    for key, value in diffusers_convert.convert_text_enc_state_dict_v20(hf_g, prefix="transformer.").items():
        out["conditioner.embedders.1.model." + key] = value
    return {k: v.contiguous() for k, v in out.items()}


@dataclass
class TinyInstantID:
    root: Path
    sdxl_folder: Path
    checkpoint: Path
    controlnet_folder: Path
    controlnet_file: Path
    adapter: Path
    lcm_lora: Path


def build_tiny_instantid(root: Path) -> TinyInstantID:
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    clip_l, clip_g = text_encoders()
    parts = {"unet": unet(), "vae": vae(), "text_encoder": clip_l, "text_encoder_2": clip_g, "scheduler": scheduler()}
    tokenizer, tokenizer_2 = tokenizers()
    folder = root / "diffusers" / "sdxl-tiny"
    StableDiffusionXLPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer_2, **parts).save_pretrained(folder)
    checkpoint = root / "checkpoints" / "sdxl-tiny.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm_checkpoint(parts["unet"], parts["vae"], clip_l, clip_g), checkpoint)
    identitynet = controlnet()
    controlnet_folder = root / "controlnet" / "instantid-tiny"
    identitynet.save_pretrained(controlnet_folder)
    controlnet_file = root / "controlnet" / "instantid-tiny.safetensors"
    shutil.copy(controlnet_folder / "diffusion_pytorch_model.safetensors", controlnet_file)
    adapter = root / "instantid" / "ip-adapter-tiny.bin"
    adapter.parent.mkdir(parents=True, exist_ok=True)
    torch.save(adapter_state(), adapter)
    lcm_lora = root / "loras" / "lcm-lora-sdxl-tiny.safetensors"
    lcm_lora.parent.mkdir(parents=True, exist_ok=True)
    save_file(lcm_lora_state(parts["unet"]), lcm_lora)
    return TinyInstantID(root, folder, checkpoint, controlnet_folder, controlnet_file, adapter, lcm_lora)


def install_into_models(files: TinyInstantID, antelopev2: Path, models: Path) -> dict[str, str]:
    """Put the tiny files where a ComfyUI user keeps theirs — the IdentityNet folder as Hugging Face
    names it, antelopev2 nested one level too deep (as unzipping into the folder leaves it); returns
    the names the loader nodes list."""
    places = {
        files.checkpoint: models / "checkpoints" / "sdxl-tiny.safetensors",
        files.sdxl_folder: models / "diffusers" / "sdxl-tiny",
        files.controlnet_folder: models / "controlnet" / "InstantID" / "ControlNetModel",
        files.controlnet_file: models / "controlnet" / "instantid-tiny.safetensors",
        files.adapter: models / "instantid" / "ip-adapter-tiny.bin",
        files.lcm_lora: models / "loras" / "lcm-lora-sdxl-tiny.safetensors",
        antelopev2: models / "insightface" / "models" / "antelopev2" / "antelopev2",
    }
    copy_into(places)
    # once more under the real files' names, which the shipped workflows name
    copy_into({files.checkpoint: models / "checkpoints" / "sd_xl_base_1.0.safetensors",
               files.adapter: models / "instantid" / "ip-adapter.bin"})
    return {"checkpoint": "sdxl-tiny.safetensors", "sdxl_folder": "sdxl-tiny (diffusers folder)",
            "identitynet_folder": "InstantID/ControlNetModel (diffusers folder)",
            "identitynet_file": "instantid-tiny.safetensors", "adapter": "ip-adapter-tiny.bin",
            "lcm_lora": "lcm-lora-sdxl-tiny.safetensors", "antelopev2": "models/antelopev2"}


# ---- native InstantID: tiny models in shapes ComfyUI's own loaders take faithfully -------------------
#
# ComfyUI builds an SDXL-family UNet only for shapes it knows: model_channels 320, 64-wide heads, text
# width 2048, added condition 2816 (pooled 1280 + six 256-wide size embeddings) and one of its depth
# patterns. Segmind Vega's ([0, 0, 1, 1, 2, 2] per input block) with 320 channels at every level
# (channel_mult [1, 1, 1], read from the weights) is a 0.12 B-parameter UNet. The IdentityNet must give
# residuals of the UNet's widths, so it has the same levels; ComfyUI takes a diffusers-layout ControlNet
# only when it equals one of its config-table entries (all of them channel_mult [1, 2, 4], so 0.3 B
# parameters and a UNet of 0.85 B to match), so the tiny IdentityNet ComfyUI loads is written in its
# original layout (ControlNetLoader reads both; the sizes then come from the weights). The middle block
# keeps two transformer blocks: the pack's loaders size it from the last level, as diffusers does.

NATIVE_LEVELS = {"block_out_channels": [320, 320, 320], "attention_head_dim": [5, 5, 5],
                 "transformer_layers_per_block": [1, 1, 2],
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]}
NATIVE_UNET = {**NATIVE_LEVELS, "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
               "cross_attention_dim": 2048, "addition_time_embed_dim": 256,
               "projection_class_embeddings_input_dim": 2816, "sample_size": 16}
NATIVE_CONTROLNET = {**NATIVE_LEVELS, "cross_attention_dim": 2048, "addition_time_embed_dim": 256,
                     "projection_class_embeddings_input_dim": 2816,
                     "conditioning_embedding_out_channels": [16, 32, 96, 256]}      # ComfyUI's fixed hint block
# full widths (2048 = 768 + 1280 of text, 1280 pooled), two layers each
NATIVE_CLIP_L = {"hidden_size": 768, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 12,
                 "projection_dim": 768}
NATIVE_CLIP_G = {"hidden_size": 1280, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 20,
                 "projection_dim": 1280}
NATIVE_RESAMPLER = {"dim": 128, "depth": 2, "num_queries": 16, "embedding_dim": 512}


def native_unet():
    from diffusers import UNet2DConditionModel

    return fill(UNet2DConditionModel(**config("sdxl_unet.json", **NATIVE_UNET)), seed=21)


def native_controlnet():
    from diffusers import ControlNetModel

    return fill(ControlNetModel(**config("identitynet.json", **NATIVE_CONTROLNET)), seed=23)


def native_text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    first = fill(CLIPTextModel(CLIPTextConfig(**config("sdxl_text_encoder.json", **NATIVE_CLIP_L))), seed=25)
    second = fill(CLIPTextModelWithProjection(CLIPTextConfig(**config("sdxl_text_encoder_2.json", **NATIVE_CLIP_G))),
                  seed=27)
    return first, second


def face_adapter_state(model, resampler: dict, seed: int = 17) -> dict:
    """The official ip-adapter.bin layout for `model` (a diffusers SDXL UNet): the resampler giving
    tokens as wide as its text, and to_k_ip / to_v_ip for every attn2, numbered over all of its
    attention processors (attn1 included) in diffusers' order."""
    from pipelines.local.adapter_files import ResamplerSize
    from pipelines.local.instantid.adapter import FaceAttnProcessor, FaceResampler

    width = model.config.cross_attention_dim
    size = ResamplerSize(dim=resampler["dim"], depth=resampler["depth"], heads=resampler["dim"] // 64,
                         num_queries=resampler["num_queries"], embedding_dim=resampler["embedding_dim"],
                         output_dim=width, ff_inner=4 * resampler["dim"])
    attention = {}
    for index, name in enumerate(model.attn_processors):
        if name.endswith("attn2.processor"):
            hidden = model.get_submodule(name[: -len(".processor")]).to_q.out_features
            processor = fill(FaceAttnProcessor(hidden, width), seed + index)
            attention.update({f"{index}.{key}": value for key, value in processor.state_dict().items()})
    return {"image_proj": fill(FaceResampler(size), seed).state_dict(), "ip_adapter": attention}


def ldm_controlnet_state(controlnet_model) -> dict:
    """A diffusers ControlNet's weights in ComfyUI's original ControlNet layout, through ComfyUI's own
    UNet key map plus the names its diffusers loader gives the zero convolutions and the hint block."""
    comfy_utils, _ = _comfy_modules()
    key_map = comfy_utils.unet_to_diffusers(comfy_unet_config(controlnet_model))
    key_map["controlnet_mid_block.weight"] = "middle_block_out.0.weight"
    key_map["controlnet_mid_block.bias"] = "middle_block_out.0.bias"
    state = controlnet_model.state_dict()
    blocks = len({key.split(".")[2] for key in state if key.startswith("controlnet_cond_embedding.blocks.")})
    hint = {"conv_in": 0, **{f"blocks.{i}": 2 * (i + 1) for i in range(blocks)}, "conv_out": 2 * (blocks + 1)}
    for name, index in hint.items():
        for suffix in ("weight", "bias"):
            key_map[f"controlnet_cond_embedding.{name}.{suffix}"] = f"input_hint_block.{index}.{suffix}"
    for key in state:
        if key.startswith("controlnet_down_blocks."):
            number, suffix = key.split(".")[1:]
            key_map[key] = f"zero_convs.{number}.0.{suffix}"
    unmapped = [key for key in state if key not in key_map]
    assert not unmapped, unmapped[:5]
    return {key_map[key]: value.contiguous() for key, value in state.items()}


@dataclass
class NativeInstantID:
    root: Path
    checkpoint: Path                # single-file SDXL (UNet, VAE, CLIP-L, CLIP-G in the original layout)
    unet_file: Path                 # the UNet alone, as models/diffusion_models holds one
    controlnet_folder: Path         # the IdentityNet in diffusers' layout (the all-in-one pipeline's)
    controlnet_ldm: Path            # the same weights in ComfyUI's original ControlNet layout
    adapter: Path                   # ip-adapter.bin


def build_native_instantid(root: Path) -> NativeInstantID:
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    model, clip_l, clip_g = native_unet(), *native_text_encoders()
    full = ldm_checkpoint(model, vae(), clip_l, clip_g)
    checkpoint = root / "checkpoints" / "sdxl-vega-tiny.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file(full, checkpoint)
    unet_file = root / "diffusion_models" / "sdxl-vega-tiny-unet.safetensors"
    unet_file.parent.mkdir(parents=True, exist_ok=True)
    prefix = "model.diffusion_model."
    save_file({k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}, unet_file)
    del full
    identitynet = native_controlnet()
    controlnet_folder = root / "controlnet" / "instantid-vega-tiny"
    identitynet.save_pretrained(controlnet_folder)
    controlnet_ldm = root / "controlnet" / "instantid-vega-tiny-ldm.safetensors"
    save_file(ldm_controlnet_state(identitynet), controlnet_ldm)
    adapter = root / "instantid" / "ip-adapter-vega-tiny.bin"
    adapter.parent.mkdir(parents=True, exist_ok=True)
    torch.save(face_adapter_state(model, NATIVE_RESAMPLER), adapter)
    return NativeInstantID(root, checkpoint, unet_file, controlnet_folder, controlnet_ldm, adapter)


# ---- native InstantID through a real ComfyUI: the files its own loaders take ------------------------
#
# CheckpointLoaderSimple builds SDXL's VAE and both CLIPs from fixed full-size configs (a VAE of another
# width, or CLIPs of another MLP width, fail to load), so the all-in-one checkpoint holds the tiny UNet
# and a real-size random SDXL VAE (0.08 B parameters) and no text encoders: ComfyUI then gives no CLIP
# (CLIP-G alone is 0.7 B parameters) and the tests condition through the test-only SDXL node in
# tests/comfyui_test_nodes.

def native_sdxl_vae():
    """SDXL's VAE at its released size (ComfyUI's fixed VAE config), random weights."""
    from diffusers import AutoencoderKL

    from instantcharacter_models import _filled_on_cpu

    return _filled_on_cpu(lambda: AutoencoderKL(**config("sdxl_vae.json")))


def sd15_unet():
    """A small UNet ComfyUI detects as SD 1.5 (320 channels, 768-wide text, no added condition):
    a MODEL that is not SDXL, for the refusal."""
    from diffusers import UNet2DConditionModel

    return fill(UNet2DConditionModel(sample_size=8, block_out_channels=(320, 320), layers_per_block=1,
                                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                     transformer_layers_per_block=(1, 1), cross_attention_dim=768,
                                     attention_head_dim=8), seed=29)


NATIVE_COMFY_NAMES = {"checkpoint": "sdxl-vega-tiny-all-in-one.safetensors", "lora": "sdxl-vega-tiny-lora.safetensors",
                      "controlnet": "instantid-vega-tiny-ldm.safetensors", "adapter": "ip-adapter-vega-tiny.bin",
                      "sd15_unet": "sd15-tiny-unet.safetensors"}
NATIVE_COMFY_FOLDERS = {"checkpoint": "checkpoints", "lora": "loras", "controlnet": "controlnet",
                        "adapter": "instantid", "sd15_unet": "diffusion_models"}


def build_native_comfy_files(root: Path) -> dict[str, Path]:
    """The native InstantID files a real ComfyUI loads (≈ 0.5 GB, fp16 as sd_xl_base_1.0 is): the
    all-in-one checkpoint (UNet + VAE), a kohya LoRA on the UNet, the IdentityNet in ComfyUI's original
    ControlNet layout, ip-adapter.bin, and an SD 1.5 UNet; key → path (keys of NATIVE_COMFY_NAMES)."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    paths = {key: root / name for key, name in NATIVE_COMFY_NAMES.items()}
    comfy_utils, diffusers_convert = _comfy_modules()

    def ldm_unet(unet_model) -> dict:                 # as ldm_checkpoint names the UNet, without the prefix
        key_map = comfy_utils.unet_to_diffusers(comfy_unet_config(unet_model))
        return {key_map[k]: v.half().contiguous() for k, v in unet_model.state_dict().items()}

    model = native_unet()
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in ldm_unet(model).items()}
    vae_state = diffusers_convert.convert_vae_state_dict(native_sdxl_vae().state_dict())
    checkpoint.update({f"first_stage_model.{k}": v.half().contiguous() for k, v in vae_state.items()})
    save_file(checkpoint, paths["checkpoint"])
    del checkpoint, vae_state
    save_file(lcm_lora_state(model), paths["lora"])
    torch.save(face_adapter_state(model, NATIVE_RESAMPLER), paths["adapter"])
    save_file({k: v.half().contiguous() for k, v in ldm_controlnet_state(native_controlnet()).items()},
              paths["controlnet"])
    save_file(ldm_unet(sd15_unet()), paths["sd15_unet"])
    return paths


def link_native_comfy_files(paths: dict[str, Path], models: Path) -> dict[str, str]:
    """Symlink the files into a ComfyUI's model folders; returns the name each loader lists."""
    for key, path in paths.items():
        target = models / NATIVE_COMFY_FOLDERS[key] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(path)
    return {key: path.name for key, path in paths.items()}


def native_workflow_on_tiny_files(prompt: dict, names: dict[str, str]) -> dict:
    """The shipped native InstantID workflow (API format) made to run on the native tiny files (`names`:
    link_native_comfy_files' answer) in a test ComfyUI: its loaders pointed at them, each CLIPTextEncode
    replaced by the test-only TestSDXLConditioning node (the tiny checkpoint has no text encoders: SDXL's
    CLIPs are 0.8 B parameters at the only size ComfyUI builds), a 64×64 latent and two steps. Everything
    else, the face models and the face from the reference photo included, runs as shipped."""
    out = json.loads(json.dumps(prompt))
    encoders = 0
    for node_id, node in sorted(out.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPTextEncode":
            encoders += 1
            out[node_id] = {"class_type": "TestSDXLConditioning", "inputs": {"seed": encoders}}
        elif kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = names["checkpoint"]
        elif kind == "ControlNetLoader":
            inputs["control_net_name"] = names["controlnet"]
        elif kind == "CharIDLoadInstantIDAdapter":
            inputs["adapter"] = names["adapter"]
        elif kind == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif kind == "KSampler":
            inputs["steps"] = 2
    return out
