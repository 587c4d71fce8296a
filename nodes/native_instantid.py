"""Native InstantID: the face adapter and the IdentityNet on the user's own SDXL MODEL (any of
ComfyUI's loaders, LoRAs, KSampler, ComfyUI's ControlNetLoader and memory management), through
ComfyUI's public patch points only:
- the face attention: attn2 patches (`patches_replace["attn2"]`) on a `model.clone()`, one per
  cross-attention layer; each computes the layer's text attention as ComfyUI does and adds the face
  branch (adapter strength, face region, start/end window);
- the IdentityNet: the user's CONTROL_NET (core ControlNetLoader) set on the positive and negative
  conditioning, as ComfyUI's ControlNetApplyAdvanced sets one, with the face tokens as its
  cross-attention context (`cross_attn_controlnet`, which ComfyUI's SDXL model hands its ControlNets);
  the negative gets the tokens of a zero embedding, as the all-in-one pipeline's negative does.
The math (resampler, face attention, layer order, region) lives in pipelines/local/instantid
(native.py, adapter.py), shared with the all-in-one pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from comfy_api.latest import io

from ..pipelines.local.instantid import native as native_math
from ..pipelines.local.instantid.conditioning import FaceConditioning, keypoint_image
from . import model_files as files
from .common import CATEGORY_LOCAL, node_id
from .face_nodes import FaceModelsSocket, FaceSocket
from .model_management import PipelineWeights
from .native_instantcharacter import SharedPatch, use_comfy_cast_ops


class NativeInstantIDError(ValueError):
    """A MODEL, adapter or input this patch cannot serve; the text says which and why."""


class InstantIDAdapterWeights(PipelineWeights):
    """The face adapter's modules as one model to ComfyUI (its log says "Requested to load" this name)."""


@dataclass
class LoadedFaceAdapter:
    """The adapter loader's output: the modules and the ModelPatcher through which ComfyUI manages
    their weights (loaded with the MODEL that uses them, offloaded, freed by 'Unload models')."""

    adapter: native_math.NativeFaceAdapter
    patcher: Any                     # comfy.model_patcher.ModelPatcher, or None outside ComfyUI's management
    name: str = ""


def load_adapter(path, dtype: torch.dtype | None, load_device: torch.device, offload_device: torch.device,
                 name: str = "") -> LoadedFaceAdapter:
    """An ip-adapter.bin (or .safetensors, official layout), loaded strictly, in a ModelPatcher."""
    import comfy.model_patcher

    from ..pipelines.local.weights import read_state

    adapter = native_math.build_native_face_adapter(read_state(path, "InstantID adapter"), dtype)
    holder = InstantIDAdapterWeights([adapter.resampler, torch.nn.ModuleList(adapter.processors)])
    use_comfy_cast_ops(holder)
    patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)
    return LoadedFaceAdapter(adapter, patcher, name)


# ---- the MODEL ------------------------------------------------------------------------------------------

def sdxl_diffusion_model(model):
    """The MODEL's SDXL UNet, or an error naming what the MODEL is."""
    import comfy.model_base

    base = getattr(model, "model", None)
    name = type(base).__name__ if base is not None else type(model).__name__
    config = getattr(base, "model_config", None)
    if not isinstance(base, comfy.model_base.SDXL):
        detail = f" ({type(config).__name__})" if config is not None else ""
        raise NativeInstantIDError(f"Apply InstantID needs an SDXL model; this MODEL is {name}{detail}")
    return base.diffusion_model


def cross_attention_layers(diffusion_model) -> list[tuple[str, int, int]]:
    """Every attn2 of the UNet as ComfyUI names it for patches: (block name, block id, transformer index)."""
    from comfy.ldm.modules.attention import SpatialTransformer

    layers = []
    for block_name, blocks in (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
                               ("output", diffusion_model.output_blocks)):
        for block_id, block in enumerate(blocks):
            for module in block:
                if isinstance(module, SpatialTransformer):
                    layers.extend((block_name, block_id, index) for index in range(len(module.transformer_blocks)))
    return layers


def check_adapter_fits(adapter: native_math.NativeFaceAdapter, diffusion_model) -> list[tuple[str, int, int]]:
    layers = cross_attention_layers(diffusion_model)
    width = adapter.resampler.size.output_dim
    context = None
    for block_name, block_id, index in layers[:1]:
        blocks = {"input": diffusion_model.input_blocks, "output": diffusion_model.output_blocks}
        block = blocks[block_name][block_id] if block_name in blocks else diffusion_model.middle_block
        transformer = next(m for m in block if hasattr(m, "transformer_blocks"))
        context = transformer.transformer_blocks[index].attn2.to_k.in_features
    if len(layers) != len(adapter.processors) or (context is not None and context != width):
        raise NativeInstantIDError(
            f"the InstantID adapter has {len(adapter.processors)} face-attention layers and {width}-wide face tokens; "
            f"this SDXL model has {len(layers)} cross-attention layers taking {context}-wide context. The adapter "
            "(ip-adapter.bin) is made for SDXL 1.0 (70 layers, 2048 wide)")
    return layers


# ---- the face attention ---------------------------------------------------------------------------------

@dataclass
class FacePatchState:
    branch: native_math.FaceBranch
    adapter_patcher: Any


class FaceAttentionPatch(SharedPatch):
    """patches_replace["attn2"][(block, id, index)]: ComfyUI's attention over the text, plus the face."""

    def __init__(self, state: FacePatchState, layer: tuple[str, int, int]):
        super().__init__(state)
        self.layer = layer

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        heads = extra_options["n_heads"]
        out = optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"))
        sigmas = extra_options.get("sigmas")
        branch = self.state.branch
        if sigmas is None or not branch.active(float(sigmas.reshape(-1)[0])):
            return out
        cond_or_uncond = extra_options.get("cond_or_uncond") or [0]
        shape = extra_options.get("original_shape")
        image_size = (shape[-2] * 8, shape[-1] * 8) if shape is not None else None
        return out + branch(self.layer, q, heads, cond_or_uncond, image_size).to(out.dtype)


def is_face_patch(patch) -> bool:
    return isinstance(patch, FaceAttentionPatch)


# ---- the IdentityNet ------------------------------------------------------------------------------------

def region_masked(control, region_for):
    """`control` (a copy of the user's ControlNet) whose own residuals are multiplied by the face
    region at their resolution before ComfyUI applies its strength and adds any previous ControlNet's;
    `region_for(height, width, device)` gives the region in pixels (the pipeline's enhance_face_region)."""
    base = type(control)

    class FaceRegionControlNet(base):
        def control_merge(self, control_out, control_prev, output_dtype):
            for key in control_out:
                for index, residual in enumerate(control_out[key]):
                    if residual is not None:
                        height, width = residual.shape[-2:]
                        scale = self.cond_hint.shape[-2] // height if self.cond_hint is not None else 8
                        region = region_for(height * scale, width * scale, residual.device)
                        control_out[key][index] = residual * native_math.residual_region(region, residual)
            return super().control_merge(control_out, control_prev, output_dtype)

        def copy(self):
            copied = super().copy()
            copied.__class__ = type(self)
            return copied

    control.__class__ = FaceRegionControlNet
    return control


def with_identitynet(conditioning, control_net, hint, strength: float, percent_range: tuple[float, float],
                     face_tokens: torch.Tensor, region_for=None, made: dict[int, Any] | None = None):
    """The conditioning with the IdentityNet set on every entry (chained after any ControlNet already
    there, as ControlNetApplyAdvanced chains), its cross-attention context the face tokens. `made`
    shared between positive and negative gives both the same ControlNet object, as
    ControlNetApplyAdvanced does: ComfyUI batches cond and uncond only when their ControlNet is one
    object (each keeps its own face tokens, which travel in the conditioning)."""
    made = {} if made is None else made
    out = []
    for text, options in conditioning:
        options = options.copy()
        previous = options.get("control")
        key = id(previous)
        if key not in made:
            control = control_net.copy().set_cond_hint(hint, strength, percent_range)
            if region_for is not None:
                control = region_masked(control, region_for)
            control.set_previous_controlnet(previous)
            made[key] = control
        options["control"] = made[key]
        options["control_apply_to_uncond"] = False
        options["cross_attn_controlnet"] = face_tokens
        out.append([text, options])
    return out


# ---- Apply ----------------------------------------------------------------------------------------------

def apply_instantid(model, positive, negative, adapter: LoadedFaceAdapter, face: FaceConditioning, control_net,
                    identity_strength: float = 0.8, adapter_strength: float = 0.8, start_percent: float = 0.0,
                    end_percent: float = 1.0, keypoints=None, enhance_face_region: bool = False, mask=None):
    """→ (a clone of `model` with the face attention, positive, negative with the IdentityNet). The given
    MODEL and conditioning are left as they were. keypoints: an IMAGE [1, H, W, 3] for the IdentityNet
    (default: the face's keypoints drawn on its canvas); mask: a MASK [H, W] or [1, H, W] face region."""
    diffusion_model = sdxl_diffusion_model(model)
    layers = check_adapter_fits(adapter.adapter, diffusion_model)
    options = model.model_options.get("transformer_options", {})
    if any(is_face_patch(p) for p in options.get("patches_replace", {}).get("attn2", {}).values()):
        raise NativeInstantIDError("this MODEL already has InstantID applied; apply it once (one face per model)")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise NativeInstantIDError(
            f"start_percent ({start_percent}) must not be above end_percent ({end_percent}), both within 0..1")
    region = None
    if mask is not None:
        region = mask.reshape(-1, *mask.shape[-2:])[0].float().cpu()
    if enhance_face_region and region is None and face.bbox is None:
        raise NativeInstantIDError("enhance_face_region needs the face's box; give a face with its bbox or a mask")
    sampling = model.get_model_object("model_sampling")
    branch = native_math.FaceBranch(adapter.adapter, face, adapter_strength, layers, enhance_face_region, region,
                                    sigma_start=float(sampling.percent_to_sigma(start_percent)),
                                    sigma_end=float(sampling.percent_to_sigma(end_percent)))
    patched = model.clone()
    if adapter_strength != 0:
        state = FacePatchState(branch, adapter.patcher)
        for layer in layers:
            patched.set_model_attn2_replace(FaceAttentionPatch(state, layer), layer[0], layer[1], layer[2])
    if control_net is None or identity_strength == 0:
        return patched, positive, negative
    if keypoints is None:
        from ..pipelines import pil_to_image_batch

        keypoints = pil_to_image_batch([keypoint_image(face)])
    hint = keypoints.movedim(-1, 1)
    tokens = branch.tokens(torch.device("cpu"))
    region_for = branch.region_mask if (enhance_face_region or region is not None) else None
    window = (start_percent, end_percent)
    made: dict[int, Any] = {}
    return (patched, with_identitynet(positive, control_net, hint, identity_strength, window, tokens[0:1], region_for,
                                      made),
            with_identitynet(negative, control_net, hint, identity_strength, window, tokens[1:2], region_for, made))


# ---- the nodes ------------------------------------------------------------------------------------------

AdapterSocket = io.Custom("CHARID_INSTANTID_ADAPTER")
DTYPES = ("auto", "bf16", "fp16", "fp32")


class LoadInstantIDAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("LoadInstantIDAdapter"), display_name="Load InstantID Adapter (native)",
            category=CATEGORY_LOCAL,
            description="The InstantID face adapter (models/instantid/ip-adapter.bin) for Apply InstantID (native). "
                        "ComfyUI loads its weights with the MODEL it is applied to and frees them with 'Unload models'.",
            inputs=[
                io.Combo.Input("adapter", options=files.instantid_adapter_options(),
                               tooltip="ip-adapter.bin from InstantX/InstantID (models/instantid)"),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="auto: fp16 on GPUs, fp32 on the CPU."),
            ],
            outputs=[AdapterSocket.Output(display_name="adapter")],
        )

    @classmethod
    def execute(cls, adapter, dtype) -> io.NodeOutput:
        import comfy.model_management as mm

        from .local import resolve_dtype

        path = files.listed_file("adapter", adapter, (files.INSTANTID_FOLDER,), tuple(files.ADAPTER_EXTENSIONS))
        device = mm.get_torch_device()
        return io.NodeOutput(load_adapter(path, resolve_dtype(dtype, device), device, mm.unet_offload_device(), adapter))


class InstantIDFace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("InstantIDFace"), display_name="InstantID Face", category=CATEGORY_LOCAL,
            description="The face InstantID uses: the identity (ArcFace embedding) of the reference's largest face, "
                        "and the keypoints and box from the pose photo (else the reference), prepared as the "
                        "all-in-one InstantID node prepares them. For Apply InstantID (native) and the face input "
                        "of InstantID (local).",
            inputs=[FaceModelsSocket.Input("face_models"), io.Image.Input("reference"),
                    io.Image.Input("pose", optional=True, tooltip="Where the face goes (its last face is used).")],
            outputs=[FaceSocket.Output(display_name="face")],
        )

    @classmethod
    def execute(cls, face_models, reference, pose=None) -> io.NodeOutput:
        from ..pipelines.local.instantid.face_input import face_from_images
        from .generator_inputs import single_image

        pose_image = single_image(pose, "pose") if pose is not None else None
        return io.NodeOutput(face_from_images(face_models, single_image(reference, "reference"), pose_image))


class ApplyInstantID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("ApplyInstantID"), display_name="Apply InstantID (native)", category=CATEGORY_LOCAL,
            description="Patches your SDXL MODEL with InstantID's face attention and sets the IdentityNet "
                        "(ControlNetLoader) on the conditioning, for KSampler. Apply once per MODEL.",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model (CheckpointLoaderSimple, UNETLoader, LoRAs applied)."),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                AdapterSocket.Input("adapter", tooltip="From Load InstantID Adapter (native)."),
                FaceSocket.Input("face", tooltip="From InstantID Face."),
                io.ControlNet.Input("control_net", tooltip="The IdentityNet (InstantID/ControlNetModel) from ControlNetLoader."),
                io.Float.Input("identity_strength", default=0.8, min=0.0, max=2.0, step=0.01,
                               tooltip="IdentityNet strength (0 = no ControlNet)."),
                io.Float.Input("adapter_strength", default=0.8, min=0.0, max=2.0, step=0.01,
                               tooltip="Face attention strength (0 = the MODEL as it was)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
                io.Boolean.Input("enhance_face_region", default=True,
                                 tooltip="Confine the face attention and IdentityNet to the face box."),
                io.Image.Input("pose_keypoints", optional=True,
                               tooltip="A keypoint image for the IdentityNet instead of the face's own."),
                io.Mask.Input("face_mask", optional=True, tooltip="A face region instead of the face box."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, model, positive, negative, adapter, face, control_net, identity_strength, adapter_strength,
                start_percent, end_percent, enhance_face_region, pose_keypoints=None, face_mask=None) -> io.NodeOutput:
        keypoints = pose_keypoints[:1] if pose_keypoints is not None else None
        return io.NodeOutput(*apply_instantid(model, positive, negative, adapter, face, control_net, identity_strength,
                                              adapter_strength, start_percent, end_percent, keypoints,
                                              enhance_face_region, face_mask))


NATIVE_INSTANTID_NODES = [LoadInstantIDAdapter, InstantIDFace, ApplyInstantID]
