"""Local InstantCharacter nodes: a loader (model files, memory mode, dtype) whose output ComfyUI
caches, and a generator with the same first ten sockets as the cloud InstantCharacter nodes.

Thin adapters over pipelines.local.instantcharacter: file names → paths through folder_paths,
ComfyUI's device choice and model management, and the shared runtime for progress, previews and
Cancel. The loaded pipeline lives in the loader's output (never in a module global).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from . import model_files as files
from .common import CATEGORY_LOCAL, node_id
from .generator_inputs import Defaults, build_request, float_input, generator_schema, validate_size_and_prompt
from .model_management import ComfyModelManagement, InstantCharacterWeights
from .runtime import generate

PIPELINE_TYPE = "CHARID_INSTANTCHARACTER"
NO_LORA = "none"
InstantCharacterPipelineSocket = io.Custom(PIPELINE_TYPE)
DTYPES = ("auto", "bf16", "fp16", "fp32")


@dataclass
class LoadedInstantCharacter:
    """The loader's output: the pipeline and how it was loaded (the generator reports both)."""

    pipeline: Any
    memory_mode: str
    sources: dict[str, str]


def memory_mode_input() -> io.Combo.Input:
    from ..pipelines.local.memory import MEMORY_MODES

    return io.Combo.Input("memory_mode", options=list(MEMORY_MODES), default="model_offload",
                          tooltip="resident (most VRAM, fastest) → model_offload → group_offload → "
                                  "sequential_offload (least VRAM, slowest).")


def dtype_input(tooltip: str) -> io.Combo.Input:
    return io.Combo.Input("dtype", options=list(DTYPES), default="auto", tooltip=tooltip)


class InstantCharacterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("InstantCharacterLoader"), display_name="Load InstantCharacter (local)",
            category=CATEGORY_LOCAL,
            description="FLUX.1-dev + SigLIP + DINOv2 + the InstantCharacter adapter from your model folders. "
                        "FLUX from a diffusers folder (models/diffusers) or the single files ComfyUI uses "
                        "(diffusion_models + vae + text_encoders). Nothing is downloaded.",
            inputs=[
                io.Combo.Input("flux_model", options=files.flux_model_options(),
                               tooltip="A FLUX.1-dev transformer file (models/diffusion_models) or a diffusers folder."),
                io.Combo.Input("vae", options=files.vae_options(), tooltip="ae.safetensors (models/vae)."),
                io.Combo.Input("clip_l", options=files.text_encoder_options(), tooltip="models/text_encoders"),
                io.Combo.Input("t5xxl", options=files.text_encoder_options(),
                               tooltip="models/text_encoders (fp16, or fp8 'scaled')"),
                io.Combo.Input("siglip", options=files.image_encoder_options(),
                               tooltip="Hugging Face folder of google/siglip-so400m-patch14-384 in models/clip_vision"),
                io.Combo.Input("dinov2", options=files.image_encoder_options(),
                               tooltip="Hugging Face folder of facebook/dinov2-giant in models/clip_vision"),
                io.Combo.Input("adapter", options=files.adapter_options(),
                               tooltip="instantcharacter_ip-adapter.bin (models/instantcharacter)"),
                io.Combo.Input("weight_format", options=["dtype", "fp8_e4m3fn", "nf4"], default="dtype",
                               tooltip="dtype: the FLUX transformer in the chosen dtype. fp8_e4m3fn: stored in fp8 "
                                       "and computed in the dtype layer by layer (half the VRAM; the adapter's "
                                       "layers stay in full precision). nf4: 4-bit (a quarter of the VRAM; needs "
                                       "a CUDA GPU and bitsandbytes)."),
                memory_mode_input(),
                dtype_input("auto: bf16 on GPUs that support it, fp32 on the CPU."),
            ],
            outputs=[InstantCharacterPipelineSocket.Output(display_name="pipeline")],
        )

    @classmethod
    def validate_inputs(cls, flux_model, vae, clip_l, t5xxl, siglip, dinov2, adapter, weight_format) -> bool | str:
        if flux_model.endswith(".gguf") and weight_format != "dtype":
            return "weight_format: a GGUF file is already quantized; choose 'dtype' for it"
        if weight_format == "nf4" and (problem := nf4_unavailable()):
            return f"weight_format nf4 needs a CUDA GPU and bitsandbytes; {problem}. Choose fp8_e4m3fn or a GGUF file"
        for name, value in (("flux_model", flux_model), ("siglip", siglip), ("dinov2", dinov2), ("adapter", adapter)):
            if value == files.NONE_FOUND:
                kind = {"flux_model": "diffusion_models", "adapter": "instantcharacter"}.get(name, "clip_vision")
                return f"{name}: no model found; put {files.WHERE_TO_GET[kind]} into models/{kind}"
        if not flux_model.endswith(files.FOLDER_SUFFIX):
            missing = [name for name, value in (("vae", vae), ("clip_l", clip_l), ("t5xxl", t5xxl))
                       if value == files.FROM_FOLDER]
            if missing:
                return (f"{', '.join(missing)}: a single FLUX transformer file needs its own VAE and text encoder "
                        "files (or choose a diffusers folder as flux_model)")
        return True

    @classmethod
    def plan(cls, flux_model, vae, clip_l, t5xxl, siglip, dinov2, adapter, **_):
        """The files these widget values name, checked to exist (FileNotFoundError / ModelFileError
        otherwise); also asked by the route node before it picks the local branch."""
        from ..pipelines.local.instantcharacter.loading import FluxFiles, InstantCharacterFiles

        def chosen(kinds, value):
            return None if value == files.FROM_FOLDER else files.find_file(kinds, value)

        if flux_model.endswith(files.FOLDER_SUFFIX):
            flux = FluxFiles(folder=files.find_folder("diffusers", flux_model[: -len(files.FOLDER_SUFFIX)]),
                             vae=chosen(("vae",), vae), clip_l=chosen(("text_encoders",), clip_l),
                             t5xxl=chosen(("text_encoders",), t5xxl))
        else:
            flux = FluxFiles(transformer=files.find_file(("diffusion_models", files.GGUF_FOLDER), flux_model),
                             vae=chosen(("vae",), vae), clip_l=chosen(("text_encoders",), clip_l),
                             t5xxl=chosen(("text_encoders",), t5xxl))
        clip_tokenizer, t5_tokenizer = files.tokenizer_folders()
        plan = InstantCharacterFiles(flux=flux, siglip=files.find_folder("clip_vision", siglip),
                                     dinov2=files.find_folder("clip_vision", dinov2),
                                     adapter=files.find_file((files.INSTANTCHARACTER_FOLDER,), adapter),
                                     clip_tokenizer=clip_tokenizer, t5_tokenizer=t5_tokenizer)
        plan.check()                                  # every file there before any weight loads
        return plan

    @classmethod
    def execute(cls, flux_model, vae, clip_l, t5xxl, siglip, dinov2, adapter, weight_format, memory_mode,
                dtype) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..pipelines.local.instantcharacter.loading import build_pipeline

        plan = cls.plan(flux_model, vae, clip_l, t5xxl, siglip, dinov2, adapter)
        device = mm.get_torch_device()                # honours --cpu and ComfyUI's device choice
        torch_dtype = resolve_dtype(dtype, device)
        # weights load to the CPU; ComfyUI makes room and places them when a phase needs them
        pipeline = build_pipeline(plan, device=device, dtype=torch_dtype, memory=memory_mode,
                                  weight_format=weight_format, host=ComfyModelManagement(InstantCharacterWeights))
        sources = {"flux": flux_model, "siglip": siglip, "dinov2": dinov2, "adapter": adapter}
        return io.NodeOutput(LoadedInstantCharacter(pipeline, memory_mode, sources))


def nf4_unavailable() -> str | None:
    """Why NF4 cannot run here (bitsandbytes' 4-bit kernels are made for CUDA GPUs), or None."""
    import importlib.util

    import comfy.model_management as mm

    device = mm.get_torch_device().type
    if device != "cuda":
        return f"ComfyUI computes on {'the CPU' if device == 'cpu' else device} here"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes into ComfyUI's Python)"
    return None


def resolve_dtype(name: str, device, half: str = "bf16"):
    """auto: fp32 on the CPU; on a GPU the `half` precision the model was made for (bf16 for FLUX,
    fp16 for SDXL) where the GPU runs it well, else the other half precision, else fp32."""
    import comfy.model_management as mm
    import torch

    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        checks = {"bf16": (mm.should_use_bf16, torch.bfloat16), "fp16": (mm.should_use_fp16, torch.float16)}
        for key in (half, *(k for k in checks if k != half)):
            check, dtype = checks[key]
            if check(device):
                return dtype
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


class InstantCharacterLocalNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..pipelines.local.instantcharacter.backend import LIMITS
        from ..pipelines.local.instantcharacter.pipeline import DEFAULTS

        return generator_schema(
            node_id("InstantCharacterLocal"), "InstantCharacter (local)", CATEGORY_LOCAL,
            "InstantCharacter on your own GPU (or CPU), from a Load InstantCharacter node. Same first ten "
            "sockets as the cloud InstantCharacter nodes. FLUX.1-dev and the adapter are non-commercial releases.",
            LIMITS, Defaults(steps=DEFAULTS["steps"], guidance=DEFAULTS["guidance"], strength=DEFAULTS["subject_scale"],
                             size_step=16),
            "Subject scale: how strongly the reference character is imposed (0 = plain FLUX).",
            [
                InstantCharacterPipelineSocket.Input("pipeline", tooltip="From Load InstantCharacter (local)."),
                float_input("true_cfg_scale", LIMITS.extras["true_cfg_scale"], DEFAULTS["true_cfg_scale"], step=0.1,
                            tooltip="Above 1 the negative prompt takes effect (true CFG; twice the work per step)."),
                io.Combo.Input("lora", options=[NO_LORA, *files.files_of(("loras",), (".safetensors",))],
                               default=NO_LORA, tooltip="A FLUX style LoRA from models/loras, applied for this "
                                                        "run only (never merged into the weights)."),
                float_input("lora_strength", LIMITS.extras["lora_strength"], 1.0),
                io.String.Input("lora_trigger", default="", tooltip="The LoRA's trigger words, put before the prompt "
                                                                    "(e.g. 'ghibli style')."),
            ],
        )

    @classmethod
    def validate_inputs(cls, prompt=None, width=None, height=None) -> bool | str:
        from ..pipelines.local.instantcharacter.backend import LIMITS

        return validate_size_and_prompt(LIMITS, prompt, width, height)

    @classmethod
    async def execute(cls, reference, prompt, negative_prompt, width, height, seed, steps, guidance, num_images,
                      strength, pipeline, true_cfg_scale, lora=NO_LORA, lora_strength=1.0,
                      lora_trigger="") -> io.NodeOutput:
        from ..pipelines.local.instantcharacter.backend import LocalInstantCharacter

        extras = {"true_cfg_scale": true_cfg_scale}
        if lora != NO_LORA:
            extras.update(lora=files.find_file(("loras",), lora), lora_strength=lora_strength, lora_trigger=lora_trigger)
        request = build_request(reference, prompt, negative_prompt, width, height, seed, steps, guidance, num_images,
                                strength, extras)
        backend = LocalInstantCharacter(pipeline.pipeline, pipeline.memory_mode)
        return io.NodeOutput(*await generate(backend, request, cls.hidden.unique_id))


LOCAL_NODES = [InstantCharacterLoader, InstantCharacterLocalNode]
