"""Local InstantID nodes: a loader (SDXL, IdentityNet, face adapter, face models, optional LCM-LoRA,
memory mode, dtype) whose output ComfyUI caches, and a generator whose first ten sockets are the
Segmind InstantID node's, then the pipeline, then the Segmind node's InstantID options.

Thin adapters over pipelines.local.instantid; the loaded pipeline lives in the loader's output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from . import model_files as files
from .common import CATEGORY_LOCAL, node_id
from .face_nodes import FaceModelsSocket, FaceSocket
from .generator_inputs import Defaults, float_input, generator_schema, single_image
from .local import LocalGeneratorNode, dtype_input, memory_mode_input, resolve_dtype
from .model_management import ComfyModelManagement, InstantIDWeights

PIPELINE_TYPE = "CHARID_INSTANTID"
NO_LCM = "none"
InstantIDPipelineSocket = io.Custom(PIPELINE_TYPE)


@dataclass
class LoadedInstantID:
    pipeline: Any
    memory_mode: str
    sources: dict[str, str]


def _folder_choice(value: str) -> tuple[bool, str]:
    if value.endswith(files.FOLDER_SUFFIX):
        return True, value[: -len(files.FOLDER_SUFFIX)]
    return False, value


PART_INPUTS = {"sdxl": "sdxl_model", "identitynet": "identitynet", "adapter": "adapter", "lcm_lora": "lcm_lora"}


def _resolve(name: str, value) -> str:
    """A listed file or folder for one of the loader's inputs (FileNotFoundError naming it otherwise)."""
    if name == "sdxl_model":
        is_folder, choice = _folder_choice(value) if isinstance(value, str) else (False, value)
        if is_folder:
            return files.listed_folder(name, choice, "diffusers", files.folders_with("diffusers", "model_index.json"))
        return files.listed_file(name, choice, ("checkpoints",), files.CHECKPOINT_EXTENSIONS)
    if name == "identitynet":
        is_folder, choice = _folder_choice(value) if isinstance(value, str) else (False, value)
        if is_folder:
            return files.listed_folder(name, choice, "controlnet", files.folders_with("controlnet", "config.json"))
        return files.listed_file(name, choice, ("controlnet",), (".safetensors",))
    if name == "adapter":
        return files.listed_file(name, value, (files.INSTANTID_FOLDER,), tuple(files.ADAPTER_EXTENSIONS))
    return files.listed_file(name, value, ("loras",), (".safetensors",))


def _loader_problems(values: dict) -> tuple[dict, list[str], list[str]]:
    """(input → path of each listed file or folder, a line per input whose file is not there, a line
    per file that is not what its input needs). A linked input (None at queue time) counts as missing."""
    from ..pipelines.local.instantid.loading import instantid_problems

    found, missing = {}, []
    for name, value in values.items():
        if name == "lcm_lora" and value == NO_LCM:
            continue
        try:
            found[name] = _resolve(name, value)
        except FileNotFoundError as exc:
            missing.append(str(exc))
    problems = instantid_problems(**{part: found.get(name) for part, name in PART_INPUTS.items()})
    return found, missing, [f"{PART_INPUTS[part]}: {text}" for part, text in problems]


class InstantIDLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("InstantIDLoader"), display_name="Load InstantID (local)", category=CATEGORY_LOCAL,
            description="SDXL + the IdentityNet + the InstantID face adapter from your model folders, with the face "
                        "models from Load Face Models. SDXL from a checkpoint (models/checkpoints) or a diffusers "
                        "folder (models/diffusers). Nothing is downloaded.",
            inputs=[
                io.Combo.Input("sdxl_model", options=files.sdxl_model_options(),
                               tooltip="An SDXL checkpoint (base 1.0 or a fine-tune) or a diffusers SDXL folder."),
                io.Combo.Input("identitynet", options=files.identitynet_options(),
                               tooltip="InstantID's ControlNetModel folder, or its diffusion_pytorch_model"
                                       ".safetensors (models/controlnet)."),
                io.Combo.Input("adapter", options=files.instantid_adapter_options(),
                               tooltip="ip-adapter.bin (models/instantid)."),
                FaceModelsSocket.Input("face_models", tooltip="From Load Face Models (antelopev2)."),
                io.Combo.Input("lcm_lora", options=[NO_LCM, *files.lora_options()], default=NO_LCM,
                               tooltip="Optional: the LCM-LoRA for SDXL (models/loras), for the generator's "
                                       "fast_mode."),
                memory_mode_input(),
                dtype_input("auto: fp16 on GPUs that run it well (as the reference runs), else bf16; fp32 on "
                            "the CPU."),
            ],
            outputs=[InstantIDPipelineSocket.Output(display_name="pipeline")],
        )

    @classmethod
    def validate_inputs(cls, sdxl_model, identitynet, adapter, lcm_lora) -> bool:
        """At queue time: names that could leave the model folders, and the kind of each chosen file
        that is there (read from its header; each problem once, its line starting with its input). A file
        the user does not have is not refused here: only a loader that runs needs it. Problems are
        raised, one line per input (files.InputProblems says why not returned)."""
        values = dict(sdxl_model=sdxl_model, identitynet=identitynet, adapter=adapter, lcm_lora=lcm_lora)
        lines = files.check_names(values) or _loader_problems(values)[2]
        if lines:
            raise files.InputProblems(lines)
        return True

    @classmethod
    def plan(cls, sdxl_model, identitynet, adapter, lcm_lora=NO_LCM, **_):
        """The files these widget values name: only names in their folders' current lists, each what
        its input needs (FileNotFoundError / ModelFileError naming the input otherwise); also asked by
        the route node before it picks the local branch. A file input that comes from another node is
        missing from the widgets: a TypeError, as only the running loader can know its value."""
        from ..pipelines.local.instantid.loading import InstantIDFiles
        from ..pipelines.local.weights import ModelFileError

        values = dict(sdxl_model=sdxl_model, identitynet=identitynet, adapter=adapter, lcm_lora=lcm_lora)
        if unsafe := files.check_names(values):
            raise FileNotFoundError("\n".join(unsafe))
        found, missing, problems = _loader_problems(values)
        if missing:
            raise FileNotFoundError("\n".join(missing))
        if problems:
            raise ModelFileError("\n".join(problems))
        plan = InstantIDFiles(sdxl=found["sdxl_model"], identitynet=found["identitynet"], adapter=found["adapter"],
                              clip_tokenizer=files.tokenizer_folders()[0], lcm_lora=found.get("lcm_lora"))
        plan.check()                                  # every file there before any weight loads
        return plan

    @classmethod
    def execute(cls, sdxl_model, identitynet, adapter, face_models, lcm_lora, memory_mode, dtype) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..pipelines.local.instantid.loading import build_pipeline

        plan = cls.plan(sdxl_model, identitynet, adapter, lcm_lora)
        device = mm.get_torch_device()
        torch_dtype = resolve_dtype(dtype, device, half="fp16")
        # weights load to the CPU; ComfyUI makes room and places them when a phase needs them
        pipeline = build_pipeline(plan, device=device, dtype=torch_dtype, memory=memory_mode,
                                  face_analyzer=face_models, host=ComfyModelManagement(InstantIDWeights))
        sources = {"sdxl": sdxl_model, "identitynet": identitynet, "adapter": adapter, "lcm_lora": lcm_lora}
        return io.NodeOutput(LoadedInstantID(pipeline, memory_mode, sources))


class InstantIDLocalNode(LocalGeneratorNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..pipelines.local.instantid.backend import LIMITS
        from ..pipelines.local.instantid.pipeline import DEFAULTS
        from ..pipelines.local.instantid.styles import NO_STYLE, STYLES

        return generator_schema(
            node_id("InstantIDLocal"), "InstantID (local)", CATEGORY_LOCAL,
            "InstantID on your own GPU (or CPU), from a Load InstantID node. Same sockets as the Segmind InstantID "
            "node. Width and height 0: the size the reference (or pose) photo gives, as the InstantID demo sizes "
            "it. The InstantID weights and antelopev2 are non-commercial releases.",
            LIMITS, Defaults(steps=DEFAULTS["steps"], guidance=DEFAULTS["guidance"],
                             strength=DEFAULTS["identity_strength"], width=0, height=0),
            "IdentityNet strength: how closely the face and its pose follow the reference (0–1.5).",
            [
                InstantIDPipelineSocket.Input("pipeline", tooltip="From Load InstantID (local)."),
                io.Combo.Input("style", options=list(STYLES), default=NO_STYLE,
                               tooltip="The InstantID demo's style templates (the same names as Segmind's)."),
                float_input("adapter_strength", LIMITS.extras["adapter_strength"], DEFAULTS["adapter_strength"],
                            tooltip="Image adapter strength: face detail (lower it if the prompt is ignored)."),
                io.Boolean.Input("enhance_face_region", default=DEFAULTS["enhance_face_region"],
                                 tooltip="Confine the identity to the face box, leaving the rest to the prompt."),
                io.Image.Input("pose_image", optional=True,
                               tooltip="Optional: a photo whose face position (and size) to follow."),
                io.Boolean.Input("fast_mode", default=False, optional=True,
                                 tooltip="LCM-LoRA + LCM scheduler (choose the LoRA in the loader): use about 5 "
                                         "steps and guidance 1.5."),
                FaceSocket.Input("face", optional=True,
                                 tooltip="Optional: a face from InstantID Face or InstantID Face (precomputed), "
                                         "used instead of analysing the reference (which is then not looked at)."),
            ],
        )

    @classmethod
    def backend_type(cls) -> type:
        from ..pipelines.local.instantid.backend import LocalInstantID

        return LocalInstantID

    @classmethod
    def extras(cls, options: dict[str, Any]) -> dict[str, Any]:
        pose_image = options.get("pose_image")
        return {"style": options["style"], "adapter_strength": options["adapter_strength"],
                "enhance_face_region": options["enhance_face_region"], "fast_mode": options.get("fast_mode", False),
                "pose_image": single_image(pose_image, "pose_image") if pose_image is not None else None,
                "face": options.get("face")}


INSTANTID_NODES = [InstantIDLoader, InstantIDLocalNode]
