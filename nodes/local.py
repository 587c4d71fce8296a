"""Local InstantCharacter nodes: a loader (model files, memory mode, dtype) whose output ComfyUI
caches, and a generator with the same first ten sockets as the cloud InstantCharacter nodes.

Thin adapters over pipelines.local.instantcharacter: file names → paths through folder_paths,
ComfyUI's device choice and model management, and the shared runtime for progress, previews and
Cancel. The loaded pipeline lives in the loader's output (never in a module global). Also what both
local packs' nodes share: `LocalGeneratorNode` (the InstantCharacter and InstantID generators'
base, as `CloudGeneratorNode` is the cloud nodes'), the memory-mode and dtype inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from comfy_api.latest import io

from . import model_files as files
from .common import CATEGORY_LOCAL, node_id
from .generator_inputs import (COMMON_INPUTS, Defaults, build_request, float_input, generator_schema,
                               validate_size_and_prompt)
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


FLUX_PART_INPUTS = {"transformer": "flux_model", "vae": "vae", "clip_l": "clip_l", "t5xxl": "t5xxl"}
FLUX_PART_FOLDERS = {"vae": ("vae",), "clip_l": ("text_encoders",), "t5xxl": ("text_encoders",)}
IMAGE_ENCODER_TYPES = {"siglip": (("siglip", "siglip_vision_model"), "google/siglip-so400m-patch14-384"),
                       "dinov2": (("dinov2",), "facebook/dinov2-giant")}


class InstantCharacterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("InstantCharacterLoader"), display_name="Load InstantCharacter (local)",
            category=CATEGORY_LOCAL,
            description="FLUX.1-dev + SigLIP + DINOv2 + the InstantCharacter adapter from your model folders. "
                        "FLUX from a diffusers folder (models/diffusers), an all-in-one FLUX checkpoint "
                        "(models/checkpoints) or the single files ComfyUI uses (diffusion_models + vae + "
                        "text_encoders). Nothing is downloaded.",
            inputs=[
                io.Combo.Input("flux_model", options=files.flux_model_options(),
                               tooltip="A FLUX.1-dev transformer file (models/diffusion_models), an all-in-one FLUX "
                                       "checkpoint (models/checkpoints) or a diffusers folder (models/diffusers)."),
                io.Combo.Input("vae", options=files.vae_options(),
                               tooltip="ae.safetensors (models/vae); '(from flux_model)' takes the diffusers "
                                       "folder's or the checkpoint's."),
                io.Combo.Input("clip_l", options=files.text_encoder_options(),
                               tooltip="models/text_encoders; '(from flux_model)' takes the folder's or the "
                                       "checkpoint's."),
                io.Combo.Input("t5xxl", options=files.text_encoder_options(),
                               tooltip="models/text_encoders (fp16, or fp8 'scaled'); '(from flux_model)' takes the "
                                       "folder's or the checkpoint's."),
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
    def validate_inputs(cls, flux_model, vae, clip_l, t5xxl, siglip, dinov2, adapter, weight_format) -> bool:
        """At queue time: names that could leave the model folders, choices that cannot work together,
        and the kind and sizes of every chosen file that is there (read from its header). A file the
        user does not have is not refused here: only a loader that runs needs it. Taking every file
        input here also keeps ComfyUI versions that check combo values from refusing such a name.
        Problems are raised, one line per input (files.InputProblems says why not returned)."""
        values = dict(flux_model=flux_model, vae=vae, clip_l=clip_l, t5xxl=t5xxl, siglip=siglip, dinov2=dinov2,
                      adapter=adapter)
        lines = files.check_names(values) or _loader_problems(values, weight_format)[2]
        if lines:
            raise files.InputProblems(lines)
        return True

    @classmethod
    def plan(cls, flux_model, vae, clip_l, t5xxl, siglip, dinov2, adapter, weight_format=None, **_):
        """The files these widget values name: only names in their folders' current lists, each what
        its input needs (FileNotFoundError / ModelFileError naming the input otherwise); also asked by
        the route node before it picks the local branch. A file input that comes from another node is
        missing from the widgets: a TypeError, as only the running loader can know its value."""
        from ..pipelines.local.instantcharacter.loading import InstantCharacterFiles
        from ..pipelines.local.weights import ModelFileError

        values = dict(flux_model=flux_model, vae=vae, clip_l=clip_l, t5xxl=t5xxl, siglip=siglip, dinov2=dinov2,
                      adapter=adapter)
        if unsafe := files.check_names(values):
            raise FileNotFoundError("\n".join(unsafe))
        found, missing, problems = _loader_problems(values, weight_format)
        if missing:
            raise FileNotFoundError("\n".join(missing))
        if problems:
            raise ModelFileError("\n".join(problems))
        clip_tokenizer, t5_tokenizer = files.tokenizer_folders()
        plan = InstantCharacterFiles(flux=found["flux"], siglip=found["siglip"], dinov2=found["dinov2"],
                                     adapter=found["adapter"], clip_tokenizer=clip_tokenizer,
                                     t5_tokenizer=t5_tokenizer)
        plan.check()                                  # every file there before any weight loads
        return plan

    @classmethod
    def execute(cls, flux_model, vae, clip_l, t5xxl, siglip, dinov2, adapter, weight_format, memory_mode,
                dtype) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..pipelines.local.instantcharacter.loading import build_pipeline

        plan = cls.plan(flux_model, vae, clip_l, t5xxl, siglip, dinov2, adapter, weight_format)
        device = mm.get_torch_device()                # honours --cpu and ComfyUI's device choice
        torch_dtype = resolve_dtype(dtype, device)
        # weights load to the CPU; ComfyUI makes room and places them when a phase needs them
        pipeline = build_pipeline(plan, device=device, dtype=torch_dtype, memory=memory_mode,
                                  weight_format=weight_format, host=ComfyModelManagement(InstantCharacterWeights))
        sources = {"flux": flux_model, "siglip": siglip, "dinov2": dinov2, "adapter": adapter}
        return io.NodeOutput(LoadedInstantCharacter(pipeline, memory_mode, sources))


def _flux_choice(flux_model) -> tuple[dict, list[str]]:
    """flux_model → FluxFiles fields ({"folder": …} / {"checkpoint": …} / {"transformer": …}), or no
    fields and the line saying why (not chosen — linked —, or not there)."""
    from ..pipelines.local.model_kinds import is_flux_checkpoint

    if not isinstance(flux_model, str):
        return {}, ["flux_model: no model chosen"]
    try:
        if flux_model.endswith(files.FOLDER_SUFFIX):
            name = flux_model[: -len(files.FOLDER_SUFFIX)]
            return {"folder": files.listed_folder("flux_model", name, "diffusers",
                                                  files.folders_with("diffusers", "model_index.json"))}, []
        if flux_model.endswith(files.CHECKPOINT_SUFFIX):
            name = flux_model[: -len(files.CHECKPOINT_SUFFIX)]
            return {"checkpoint": files.listed_file("flux_model", name, ("checkpoints",), files.CHECKPOINT_EXTENSIONS)}, []
        path = files.listed_file("flux_model", flux_model, ("diffusion_models", files.GGUF_FOLDER),
                                 files.FLUX_FILE_EXTENSIONS)
        return ({"checkpoint": path} if is_flux_checkpoint(path) else {"transformer": path}), []
    except FileNotFoundError as exc:
        if flux_model == files.NONE_FOUND:
            exc = files.missing("flux_model", None, ("diffusion_models", "checkpoints", "diffusers"), "FLUX model")
        return {}, [str(exc)]


def _loader_problems(values: dict, weight_format) -> tuple[dict, list[str], list[str]]:
    """(what was found, a line per input whose file is not there — or not known: linked —, a line per
    problem with what is there: wrong kinds, sizes that do not fit, choices that cannot work together)."""
    from ..pipelines.local.instantcharacter.loading import FluxFiles, adapter_problem, flux_problems

    problems: list[str] = []
    flux_model = values["flux_model"]
    if isinstance(flux_model, str) and flux_model.endswith(".gguf") and weight_format not in (None, "dtype"):
        problems.append("weight_format: a GGUF file is already quantized; choose 'dtype' for it")
    if weight_format == "nf4" and (problem := nf4_unavailable()):
        problems.append(f"weight_format nf4 needs a CUDA GPU and bitsandbytes; {problem}. Choose fp8_e4m3fn or a "
                        "GGUF file")
    fields, missing = _flux_choice(flux_model)
    has_source = bool(fields)
    skip = set() if has_source else {"transformer"}
    for part, folders in FLUX_PART_FOLDERS.items():
        value = values[part]
        if value in files.FROM_MODEL_VALUES:
            if "transformer" in fields:
                title = {"vae": "VAE", "clip_l": "CLIP-L", "t5xxl": "T5-XXL"}[part]
                problems.append(f"{part}: a single FLUX transformer file needs its own {title} file (or choose a "
                                "diffusers folder or an all-in-one checkpoint as flux_model)")
            elif not has_source:
                skip.add(part)
            continue
        try:
            fields[part] = files.listed_file(part, value, folders, files.CHECKPOINT_EXTENSIONS)
        except FileNotFoundError as exc:
            skip.add(part)
            missing.append(str(exc))
    flux = FluxFiles(**fields)
    found = {"flux": flux}
    problems += [f"{FLUX_PART_INPUTS[part]}: {text}" for part, text in flux_problems(flux, tuple(skip))]
    for name in ("siglip", "dinov2"):
        try:
            found[name] = files.listed_folder(name, values[name], "clip_vision", files.image_encoder_options())
        except FileNotFoundError as exc:
            missing.append(str(exc))
            continue
        problems += _image_encoder_problem(name, values[name], found[name])
    try:
        found["adapter"] = files.listed_file("adapter", values["adapter"], (files.INSTANTCHARACTER_FOLDER,),
                                             tuple(files.ADAPTER_EXTENSIONS))
    except FileNotFoundError as exc:
        missing.append(str(exc))
    else:
        problem = _header_problem(lambda: adapter_problem(found["adapter"]))
        problems += [f"adapter: {problem}"] if problem else []
    return found, missing, problems


def _header_problem(check) -> str | None:
    from ..pipelines.local.weights import ModelFileError

    try:
        return check()
    except ModelFileError as exc:
        return str(exc).partition(": ")[2] or str(exc)


def _image_encoder_problem(name: str, value: str, folder: str) -> list[str]:
    """A SigLIP folder chosen as DINOv2 or the other way round, from its config.json's model_type."""
    import json
    import os

    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type", "")
    except (OSError, ValueError):
        return [f"{name}: {value} has no readable config.json; it is not a Hugging Face model folder"]
    accepted, wanted = IMAGE_ENCODER_TYPES[name]
    if model_type not in accepted:
        return [f"{name}: {value} is a {model_type or 'model of unknown type'} folder; choose {wanted}"]
    return []


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


class LoadedPipeline(Protocol):
    """A local loader's output (LoadedInstantCharacter, LoadedInstantID)."""

    pipeline: Any
    memory_mode: str


class LocalGeneratorNode(io.ComfyNode):
    """The shared part of both local generator nodes: queue-time checks against the backend's limits,
    and execute = common sockets + this node's extras → the backend over the loader's pipeline →
    images + info. Each node declares its schema, its backend (imported when first asked: loading the
    pack imports no heavy library) and how its own widgets become request extras."""

    @classmethod
    def backend_type(cls) -> type:
        """The pipelines.local backend class (LIMITS, and built from a pipeline and a memory mode)."""
        raise NotImplementedError

    @classmethod
    def extras(cls, options: dict[str, Any]) -> dict[str, Any]:
        """This node's own widgets → the backend's request extras (default: passed as they are)."""
        return options

    @classmethod
    def validate_inputs(cls, prompt=None, width=None, height=None) -> bool | str:
        return validate_size_and_prompt(cls.backend_type().LIMITS, prompt, width, height)

    @classmethod
    async def execute(cls, **inputs) -> io.NodeOutput:
        common = [inputs.pop(name, None) for name in COMMON_INPUTS]
        loaded: LoadedPipeline = inputs.pop("pipeline")
        request = build_request(*common, cls.extras(inputs))
        backend = cls.backend_type()(loaded.pipeline, loaded.memory_mode)
        return io.NodeOutput(*await generate(backend, request, cls.hidden.unique_id))


class InstantCharacterLocalNode(LocalGeneratorNode):
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
    def backend_type(cls) -> type:
        from ..pipelines.local.instantcharacter.backend import LocalInstantCharacter

        return LocalInstantCharacter

    @classmethod
    def extras(cls, options: dict[str, Any]) -> dict[str, Any]:
        extras = {"true_cfg_scale": options["true_cfg_scale"]}
        if (lora := options.get("lora", NO_LORA)) != NO_LORA:
            extras.update(lora=files.find_file(("loras",), lora), lora_strength=options.get("lora_strength", 1.0),
                          lora_trigger=options.get("lora_trigger", ""))
        return extras


LOCAL_NODES = [InstantCharacterLoader, InstantCharacterLocalNode]
