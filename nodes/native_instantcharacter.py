"""Native InstantCharacter: the subject branch patched into the user's own FLUX MODEL (any of
ComfyUI's loaders, LoRAs, fp8/GGUF weights, KSampler, ComfyUI's memory management), through
ComfyUI's public patch points on a `model.clone()` only — never by replacing a method.

Two mechanisms, chosen when Apply runs by trying the running ComfyUI's own FLUX class:
- attention patches (ComfyUI versions whose FLUX blocks call `attn1_patch` / `attn1_output_patch`):
  the query patch sees the image query after the block's q-norm and before RoPE, recovers the raw
  query's direction by dividing out the norm's scale (the subject branch RMS-normalises it again),
  computes the branch and leaves it in the block call's `extra_options`; the output patch adds it
  to the image part of the attention output before the output projection;
- block replacement (`patches_replace["dit"]`, ComfyUI versions without those patches, whose FLUX
  code is frozen): the FLUX.1 block computed from its own submodules (so fp8/GGUF/LoRA weights keep
  working), with the branch fed the exact raw query. Any block structure other than FLUX.1's is
  refused, never approximated.
The math (projector, subject attention, processor order, timestep) lives in
pipelines/local/instantcharacter (native.py, adapter.py), shared with the all-in-one pipeline.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import torch
from comfy_api.latest import io

from ..pipelines.local.instantcharacter import native as native_math
from ..pipelines.local.instantcharacter.adapter import ReferenceFeatures, SubjectAdapter
from ..pipelines.local.instantcharacter.native import raw_query_from_normed
from . import model_files as files
from .common import CATEGORY_LOCAL, node_id
from .model_management import ComfyModelManagement, PipelineWeights

ATTENTION_PATCHES = "attention_patches"
BLOCK_REPLACEMENT = "block_replacement"
MECHANISMS = (ATTENTION_PATCHES, BLOCK_REPLACEMENT)
# per-call state: the query patch leaves the branch's output for the output patch of the same block
# call (ComfyUI hands both the same extra_options dict); the double blocks of a call leave the text
# length for its single blocks (block replacement: one transformer_options dict per model call)
SUBJECT_SLOT = "charid_instantcharacter_subject"
TEXT_LENGTH_SLOT = "charid_instantcharacter_text_length"
# a constant vector this large has an RMS far above any norm's epsilon, and its square fits fp16
NORM_PROBE_VALUE = 64.0


class NativeInstantCharacterError(ValueError):
    """A MODEL, adapter or ComfyUI this patch cannot serve; the text says which and why."""


@dataclass
class LoadedAdapter:
    """The adapter loader's output: the modules and the ModelPatcher through which ComfyUI manages
    their weights (loaded with the MODEL that uses them, offloaded, freed by 'Unload models')."""

    adapter: SubjectAdapter
    patcher: Any                     # comfy.model_patcher.ModelPatcher, or None outside ComfyUI's management
    name: str = ""


def use_comfy_cast_ops(module: torch.nn.Module) -> None:
    """Short of VRAM, ComfyUI loads a model in part and leaves the rest of its weights on the offload
    device; only its own cast ops compute with weights left there (they bring each to the input's
    device and dtype when used). The adapter's plain Linear and LayerNorm layers become those ops:
    same parameters, same math. (Its RMS norms and resampler latents move themselves.)"""
    import comfy.ops

    swaps = {torch.nn.Linear: comfy.ops.manual_cast.Linear, torch.nn.LayerNorm: comfy.ops.manual_cast.LayerNorm}
    for layer in module.modules():
        if type(layer) in swaps:
            layer.__class__ = swaps[type(layer)]


class InstantCharacterAdapterWeights(PipelineWeights):
    """The adapter's modules as one model to ComfyUI (its log says "Requested to load" this name)."""


def load_adapter(path, dtype: torch.dtype | None, load_device: torch.device, offload_device: torch.device,
                 name: str = "") -> LoadedAdapter:
    """An adapter file (.bin or .safetensors, official layout), loaded strictly, in a ModelPatcher."""
    from ..pipelines.local.instantcharacter.adapter import build_adapter
    from ..pipelines.local.weights import read_state

    return adapter_in_patcher(build_adapter(read_state(path, "InstantCharacter adapter"), dtype), load_device,
                              offload_device, name)


def adapter_in_patcher(adapter: SubjectAdapter, load_device: torch.device, offload_device: torch.device,
                       name: str = "") -> LoadedAdapter:
    """A built adapter's modules in a ModelPatcher the sampler loads with the MODEL."""
    import comfy.model_patcher

    holder = InstantCharacterAdapterWeights([adapter.projector, adapter.processors])
    use_comfy_cast_ops(holder)
    patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)
    return LoadedAdapter(adapter, patcher, name)


@dataclass
class SubjectPatchState:
    """What every patch object of one Apply shares."""

    branch: native_math.SubjectBranch
    diffusion_model: Any             # the FLUX module the patched MODEL runs (its blocks' norms are read)
    adapter_patcher: Any


class SharedPatch:
    """ComfyUI's patch-object protocol: `models()` makes the sampler load the adapter with the MODEL;
    `to()` is a no-op (features and tokens move lazily to the device the query is on); `clone()`
    deep-copies a MODEL's options, patch objects included: they share their state instead (read-only
    weights, caches keyed by content), so a clone never copies the adapter's weights."""

    def __init__(self, state: SubjectPatchState):
        self.state = state

    def models(self) -> list:
        return [self.state.adapter_patcher] if self.state.adapter_patcher is not None else []

    def to(self, device_or_dtype):
        return self

    def __deepcopy__(self, memo):
        return self


def call_sigmas(options: dict) -> torch.Tensor:
    sigmas = options.get("sigmas") if options else None
    if sigmas is None:
        raise NativeInstantCharacterError(
            "InstantCharacter needs the sampler's sigma (transformer_options['sigmas']), which ComfyUI's samplers "
            "set; this model call came without it")
    return sigmas


# ---- attention patches ----------------------------------------------------------------------------

def image_slice(options: dict) -> tuple[int, int]:
    found = options.get("img_slice")
    if found is None:
        raise NativeInstantCharacterError(
            "this ComfyUI's FLUX attention patch did not say where the image tokens are (extra_options['img_slice'])")
    return int(found[0]), int(found[1])


def query_norm(diffusion_model, block_type: str, block_index: int):
    if block_type == "double":
        return diffusion_model.double_blocks[block_index].img_attn.norm.query_norm
    return diffusion_model.single_blocks[block_index].norm.query_norm


def effective_norm_scale(norm, like: torch.Tensor) -> torch.Tensor:
    """The scale the block's q-norm multiplies by, as it computes now (its own weight casting, LoRA
    patches and device): the norm applied to a constant vector is its scale, up to eps / value²."""
    probe = torch.full((1, like.shape[-1]), NORM_PROBE_VALUE, dtype=like.dtype, device=like.device)
    return norm(probe)[0]


class SubjectQueryPatch(SharedPatch):
    """attn1_patch: the branch from the block's image query (post q-norm, pre RoPE)."""

    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None):
        branch = self.state.branch
        sigmas = call_sigmas(extra_options)
        scales = branch.scales(sigmas, q.shape[0])
        if not any(scales):
            return {}
        start, end = image_slice(extra_options)
        block_type, block_index = extra_options["block_type"], extra_options["block_index"]
        scale = effective_norm_scale(query_norm(self.state.diffusion_model, block_type, block_index), q)
        if bool((scale == 0).any()):
            raise NativeInstantCharacterError(
                f"the q-norm of FLUX {block_type} block {block_index} has a zero scale, so its raw query cannot be "
                "recovered; apply InstantCharacter to this model before the node that zeroed it")
        raw_query = raw_query_from_normed(q[:, :, start:end], scale)
        extra_options[SUBJECT_SLOT] = (start, end, branch(block_type, block_index, raw_query, sigmas, scales))
        return {}


class SubjectOutputPatch(SharedPatch):
    """attn1_output_patch: the branch joins the image part of the attention output [B, L, H*D]."""

    def __call__(self, attn, extra_options):
        found = extra_options.pop(SUBJECT_SLOT, None)
        if found is None:
            return attn
        start, end, subject = found
        return torch.cat([attn[:, :start], attn[:, start:end] + subject.to(attn.dtype), attn[:, end:]], dim=1)


# ---- block replacement ------------------------------------------------------------------------------

def _layers(block):
    """The module a FLUX block class lives in: its own apply_mod and attention functions."""
    return sys.modules[type(block).__module__]


def flux1_structure_problem(diffusion_model) -> str | None:
    """Why the blocks are not FLUX.1's (what the block replacement computes), or None."""
    import torch.nn as nn

    for index, block in enumerate(diffusion_model.double_blocks):
        mlp = getattr(block, "img_mlp", None)
        if getattr(block, "flipped_img_txt", False):
            return f"double block {index} puts the image tokens before the text (flipped_img_txt)"
        if getattr(block, "yak_mlp", False) or not getattr(block, "modulation", False):
            return f"double block {index} has another MLP or a global modulation"
        if not (isinstance(mlp, nn.Sequential) and len(mlp) == 3 and isinstance(mlp[1], nn.GELU)):
            return f"double block {index} has another MLP (not Linear → GELU → Linear)"
    for index, block in enumerate(diffusion_model.single_blocks):
        if getattr(block, "yak_mlp", False) or getattr(block, "modulation", None) is None:
            return f"single block {index} has another MLP or a global modulation"
        if not isinstance(block.mlp_act, nn.GELU) or block.mlp_hidden_dim_first != block.mlp_hidden_dim:
            return f"single block {index} has another MLP activation"
    return None


def double_block_with_subject(block, args: dict, subject) -> dict:
    """FLUX.1's double-stream block (as ComfyUI computes it) with `subject(raw image query)` added to
    the image attention output before img_attn.proj; `subject` returns [B, L_img, H*D]."""
    layers = _layers(block)
    img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
    mask, options = args.get("attn_mask"), args.get("transformer_options") or {}
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)

    img_qkv = block.img_attn.qkv(layers.apply_mod(block.img_norm1(img), (1 + img_mod1.scale), img_mod1.shift))
    img_q, img_k, img_v = img_qkv.view(img_qkv.shape[0], img_qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    image_subject = subject(img_q)                 # the raw query: before the q-norm and RoPE
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)

    txt_qkv = block.txt_attn.qkv(layers.apply_mod(block.txt_norm1(txt), (1 + txt_mod1.scale), txt_mod1.shift))
    txt_q, txt_k, txt_v = txt_qkv.view(txt_qkv.shape[0], txt_qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)

    attn = layers.attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                            torch.cat((txt_v, img_v), dim=2), pe=pe, mask=mask, transformer_options=options)
    txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
    img_attn = img_attn + image_subject.to(img_attn.dtype)

    img = img + layers.apply_mod(block.img_attn.proj(img_attn), img_mod1.gate)
    img = img + layers.apply_mod(block.img_mlp(layers.apply_mod(block.img_norm2(img), (1 + img_mod2.scale),
                                                                img_mod2.shift)), img_mod2.gate)
    txt = txt + layers.apply_mod(block.txt_attn.proj(txt_attn), txt_mod1.gate)
    txt = txt + layers.apply_mod(block.txt_mlp(layers.apply_mod(block.txt_norm2(txt), (1 + txt_mod2.scale),
                                                                txt_mod2.shift)), txt_mod2.gate)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return {"img": img, "txt": txt}


def single_block_with_subject(block, args: dict, text_length: int, subject) -> dict:
    """FLUX.1's single-stream block with `subject(raw image query)` added to the image part of the
    attention output before linear2."""
    layers = _layers(block)
    x, vec, pe = args["img"], args["vec"], args["pe"]
    mask, options = args.get("attn_mask"), args.get("transformer_options") or {}
    mod, _ = block.modulation(vec)
    qkv, mlp = torch.split(block.linear1(layers.apply_mod(block.pre_norm(x), (1 + mod.scale), mod.shift)),
                           [3 * block.hidden_size, block.mlp_hidden_dim_first], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    image_subject = subject(q[:, :, text_length:])
    q, k = block.norm(q, k, v)
    attn = layers.attention(q, k, v, pe=pe, mask=mask, transformer_options=options)
    attn = torch.cat([attn[:, :text_length], attn[:, text_length:] + image_subject.to(attn.dtype)], dim=1)
    output = block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))
    x = x + layers.apply_mod(output, mod.gate)
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return {"img": x}


class BlockReplacement(SharedPatch):
    """patches_replace["dit"][(block_type + "_block", index)]."""

    def __init__(self, state: SubjectPatchState, block_type: str, index: int):
        super().__init__(state)
        self.block_type = block_type
        self.index = index

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options")
        if options is None:
            raise NativeInstantCharacterError("this ComfyUI's FLUX block replacement got no transformer_options")
        if self.block_type == "double":
            options[TEXT_LENGTH_SLOT] = args["txt"].shape[1]
        sigmas = call_sigmas(options)
        scales = self.state.branch.scales(sigmas, args["img"].shape[0])
        if not any(scales):
            return extra["original_block"](args)

        def subject(raw_query):
            return self.state.branch(self.block_type, self.index, raw_query, sigmas, scales)

        if self.block_type == "double":
            return double_block_with_subject(self.state.diffusion_model.double_blocks[self.index], args, subject)
        text_length = options.get(TEXT_LENGTH_SLOT)
        if text_length is None:
            raise NativeInstantCharacterError("the single blocks ran before any double block; the text length is unknown")
        return single_block_with_subject(self.state.diffusion_model.single_blocks[self.index], args, text_length,
                                         subject)


# ---- choosing the mechanism -------------------------------------------------------------------------

def attention_patches_honoured(diffusion_model) -> bool:
    """Whether the running ComfyUI's FLUX calls attention patches the way the query and output
    patches need: a miniature of the model's own class (its parameters, sizes shrunk) runs once with
    recording patches; both patches must be called in every block, before RoPE (pe still to apply),
    with the image slice, and with one extra_options dict per block call."""
    import types

    real = diffusion_model.params
    axes = [2] * len(real.axes_dim)                  # RoPE axes as many as the real model's, 2 wide each
    params = dataclasses.replace(real, hidden_size=2 * sum(axes), num_heads=2, depth=1, depth_single_blocks=1,
                                 axes_dim=axes, in_channels=1, out_channels=1, context_in_dim=4,
                                 vec_in_dim=4 if real.vec_in_dim is not None else None)
    try:
        # plain torch layers: ComfyUI's own ops may defer creating weights until a state dict loads
        operations = types.SimpleNamespace(Linear=torch.nn.Linear, LayerNorm=torch.nn.LayerNorm,
                                           RMSNorm=torch.nn.RMSNorm, Conv2d=torch.nn.Conv2d, Embedding=torch.nn.Embedding)
        miniature = type(diffusion_model)(dtype=torch.float32, device="cpu", operations=operations,
                                          **dataclasses.asdict(params))
    except Exception as exc:                 # a signature this code does not know: say so, guess nothing
        raise NativeInstantCharacterError(
            f"could not try this ComfyUI's FLUX class ({type(diffusion_model).__module__}.{type(diffusion_model).__name__}) "
            f"for attention patches: {type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        for parameter in miniature.parameters():
            parameter.copy_(torch.full_like(parameter, 0.02))
    seen: list[tuple] = []

    def query_patch(q, k, v, pe=None, attn_mask=None, extra_options=None):
        seen.append(("query", extra_options.get("block_type"), id(extra_options), pe is not None,
                     extra_options.get("img_slice") is not None, q.ndim))
        return {}

    def output_patch(attn, extra_options):
        seen.append(("output", extra_options.get("block_type"), id(extra_options)))
        return attn

    options = {"patches": {"attn1_patch": [query_patch], "attn1_output_patch": [output_patch]},
               "sigmas": torch.ones(1)}
    x = torch.zeros(1, 1, 2 * params.patch_size, 2 * params.patch_size)
    extra = {"guidance": torch.ones(1)} if params.guidance_embed else {}
    with torch.no_grad():
        miniature(x, torch.ones(1), torch.zeros(1, 2, 4), y=torch.zeros(1, 4) if params.vec_in_dim else None,
                  transformer_options=options, **extra)
    for block_type in ("double", "single"):
        queries = [s for s in seen if s[0] == "query" and s[1] == block_type]
        outputs = [s for s in seen if s[0] == "output" and s[1] == block_type]
        if len(queries) != 1 or len(outputs) != 1:
            return False
        _, _, query_options, pe_pending, has_slice, ndim = queries[0]
        if not (pe_pending and has_slice and ndim == 4 and outputs[0][2] == query_options):
            return False
    return True


def stored_query_scales_have_zeros(diffusion_model) -> bool:
    """A zero in a stored q-norm scale loses that part of the raw query after the norm: then only the
    block replacement (which sees the raw query) is exact. Unreadable weights count as fine here; the
    query patch checks the scales it actually uses."""
    for block_type, blocks in (("double", diffusion_model.double_blocks), ("single", diffusion_model.single_blocks)):
        for index in range(len(blocks)):
            norm = query_norm(diffusion_model, block_type, index)
            scale = getattr(norm, "weight", None)
            scale = getattr(norm, "scale", None) if scale is None else scale
            if isinstance(scale, torch.Tensor) and scale.device.type != "meta" and bool((scale == 0).any()):
                return True
    return False


# ---- Apply -------------------------------------------------------------------------------------------

def flux_diffusion_model(model):
    """The MODEL's FLUX.1 transformer, or an error naming what the MODEL is."""
    import comfy.ldm.flux.model

    base = getattr(model, "model", None)
    diffusion_model = getattr(base, "diffusion_model", None)
    name = type(base).__name__ if base is not None else type(model).__name__
    if not isinstance(diffusion_model, comfy.ldm.flux.model.Flux) or type(diffusion_model) is not comfy.ldm.flux.model.Flux:
        raise NativeInstantCharacterError(f"Apply InstantCharacter needs a FLUX.1 model; this MODEL is {name}")
    params = diffusion_model.params
    for flag in ("global_modulation", "mlp_silu_act", "yak_mlp", "txt_norm"):
        if getattr(params, flag, False):
            raise NativeInstantCharacterError(
                f"Apply InstantCharacter needs a FLUX.1 model; this MODEL is {name} with {flag} (not FLUX.1)")
    return diffusion_model


def check_adapter_fits(adapter: SubjectAdapter, diffusion_model) -> None:
    blocks = len(diffusion_model.double_blocks) + len(diffusion_model.single_blocks)
    processors = len(adapter.processors)
    hidden = adapter.processors[0].to_k_ip.out_features if processors else 0
    head_dim = adapter.processors[0].norm_ip_q.dim if processors else 0
    model_head_dim = diffusion_model.hidden_size // diffusion_model.num_heads
    if (processors, hidden, head_dim) != (blocks, diffusion_model.hidden_size, model_head_dim):
        raise NativeInstantCharacterError(
            f"the InstantCharacter adapter has {processors} attention processors of width {hidden} ({head_dim}-wide "
            f"heads); this FLUX model has {blocks} blocks of width {diffusion_model.hidden_size} ({model_head_dim}-wide "
            "heads). The adapter is made for FLUX.1-dev (19 double + 38 single blocks, width 3072)")


def is_subject_patch(patch) -> bool:
    return isinstance(patch, SharedPatch)


def existing_patches(model) -> tuple[bool, list]:
    """(whether InstantCharacter is already applied, the dit block replacements of other nodes)."""
    options = model.model_options.get("transformer_options", {})
    ours = any(is_subject_patch(p) for patches in options.get("patches", {}).values() for p in patches)
    dit = options.get("patches_replace", {}).get("dit", {})
    ours = ours or any(is_subject_patch(p) for p in dit.values())
    return ours, [key for key, p in dit.items() if not is_subject_patch(p)]


def apply_instantcharacter(model, adapter: LoadedAdapter, features: ReferenceFeatures, weight: float,
                           start_percent: float = 0.0, end_percent: float = 1.0, mechanism: str = "auto"):
    """→ (a clone of `model` with the subject branch, the mechanism used); the given MODEL is left as
    it was. A second Apply on a MODEL that already has one is refused (the reference defines one
    subject). `mechanism`: "auto" (attention patches where this ComfyUI's FLUX honours them, else
    block replacement) or one of MECHANISMS (tests force the block replacement where both exist)."""
    diffusion_model = flux_diffusion_model(model)
    check_adapter_fits(adapter.adapter, diffusion_model)
    already, others = existing_patches(model)
    if already:
        raise NativeInstantCharacterError(
            "this MODEL already has InstantCharacter applied; apply it once (one reference per model)")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise NativeInstantCharacterError(
            f"start_percent ({start_percent}) must not be above end_percent ({end_percent}), both within 0..1")
    if mechanism == "auto":
        mechanism = (ATTENTION_PATCHES if attention_patches_honoured(diffusion_model)
                     and not stored_query_scales_have_zeros(diffusion_model) else BLOCK_REPLACEMENT)
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be 'auto' or one of {MECHANISMS}, not {mechanism!r}")
    sampling = model.get_model_object("model_sampling")
    branch = native_math.SubjectBranch(adapter.adapter, features, weight, len(diffusion_model.double_blocks),
                           sigma_start=float(sampling.percent_to_sigma(start_percent)),
                           sigma_end=float(sampling.percent_to_sigma(end_percent)))
    state = SubjectPatchState(branch, diffusion_model, adapter.patcher)
    patched = model.clone()
    if mechanism == ATTENTION_PATCHES:
        patched.set_model_attn1_patch(SubjectQueryPatch(state))
        patched.set_model_attn1_output_patch(SubjectOutputPatch(state))
    else:
        if problem := flux1_structure_problem(diffusion_model):
            raise NativeInstantCharacterError(
                f"this ComfyUI's FLUX blocks have no attention patches, and the block replacement computes FLUX.1 "
                f"blocks only: {problem}")
        if others:
            raise NativeInstantCharacterError(
                f"another node already replaces FLUX blocks {sorted(others)[:3]} of this MODEL; on this ComfyUI "
                "InstantCharacter replaces every block, so apply it before that node")
        for block_type, blocks in (("double", diffusion_model.double_blocks), ("single", diffusion_model.single_blocks)):
            for index in range(len(blocks)):
                patched.set_model_patch_replace(BlockReplacement(state, block_type, index), "dit",
                                                f"{block_type}_block", index)
    return patched, mechanism



# ---- the nodes ------------------------------------------------------------------------------------------

AdapterSocket = io.Custom("CHARID_INSTANTCHARACTER_ADAPTER")
EncodersSocket = io.Custom("CHARID_INSTANTCHARACTER_ENCODERS")
DTYPES = ("auto", "bf16", "fp16", "fp32")


class InstantCharacterEncoderWeights(PipelineWeights):
    """SigLIP + DINOv2 as one model to ComfyUI while they encode a reference."""


@dataclass
class LoadedEncoders:
    """The image encoders' output: SigLIP + DINOv2 with their processors, kept on the CPU between uses
    (they run once per reference image and leave the GPU afterwards); features cached per image."""

    encoders: Any                    # pipelines.local.instantcharacter.pipeline.ImageEncoders
    dtype: torch.dtype
    host: Any = None                 # ComfyModelManagement: ComfyUI makes room before they move in
    cache: Any = None

    def __post_init__(self):
        from ..pipelines.local.caching import LRU

        self.cache = LRU(4)

    def features(self, image, device: torch.device) -> ReferenceFeatures:
        """The reference features of a PIL image (encoded once per image content and dtype)."""
        from ..pipelines.local.caching import image_key
        from ..pipelines.local.instantcharacter.features import reference_features
        from ..pipelines.local.memory import Placement

        def make():
            encoders = self.encoders
            with Placement(device, offload=True, host=self.host).on_device(encoders.siglip, encoders.dinov2):
                features = reference_features(image, encoders.siglip, encoders.siglip_processor, encoders.dinov2,
                                              encoders.dinov2_processor, device, self.dtype)
            return features.to(torch.device("cpu"), self.dtype)
        return self.cache.fetch((image_key(image), self.dtype), make)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    from .local import resolve_dtype as local_resolve_dtype

    return local_resolve_dtype(name, device)


class LoadInstantCharacterAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("LoadInstantCharacterAdapter"), display_name="Load InstantCharacter Adapter (native)",
            category=CATEGORY_LOCAL,
            description="The InstantCharacter adapter (models/instantcharacter) for Apply InstantCharacter. ComfyUI "
                        "loads its weights with the MODEL it is applied to and frees them with 'Unload models'.",
            inputs=[
                io.Combo.Input("adapter", options=files.adapter_options(),
                               tooltip="instantcharacter_ip-adapter.bin (models/instantcharacter)"),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="auto: bf16 on GPUs that support it, fp32 on the CPU."),
            ],
            outputs=[AdapterSocket.Output(display_name="adapter")],
        )

    @classmethod
    def execute(cls, adapter, dtype) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..pipelines.local.instantcharacter.loading import adapter_problem
        from ..pipelines.local.weights import ModelFileError

        path = files.listed_file("adapter", adapter, (files.INSTANTCHARACTER_FOLDER,), tuple(files.ADAPTER_EXTENSIONS))
        if problem := adapter_problem(path):
            raise ModelFileError(f"adapter: {problem}")
        device = mm.get_torch_device()
        return io.NodeOutput(load_adapter(path, resolve_dtype(dtype, device), device, mm.unet_offload_device(), adapter))


class LoadInstantCharacterEncoders(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("LoadInstantCharacterEncoders"), display_name="Load InstantCharacter Image Encoders",
            category=CATEGORY_LOCAL,
            description="SigLIP-so400m-384 and DINOv2-giant (Hugging Face folders in models/clip_vision) for Apply "
                        "InstantCharacter. They encode each reference once and leave the GPU afterwards.",
            inputs=[
                io.Combo.Input("siglip", options=siglip_options(),
                               tooltip="Hugging Face folder of google/siglip-so400m-patch14-384 in models/clip_vision, "
                                       "or the single file ComfyUI uses for Redux (sigclip_vision_patch14_384."
                                       "safetensors): the same features"),
                io.Combo.Input("dinov2", options=files.image_encoder_options(),
                               tooltip="Hugging Face folder of facebook/dinov2-giant in models/clip_vision"),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="auto: bf16 on GPUs that support it, fp32 on the CPU."),
            ],
            outputs=[EncodersSocket.Output(display_name="image_encoders")],
        )

    @classmethod
    def validate_inputs(cls, siglip, dinov2) -> bool:
        """At queue time: names that could leave the model folders, and a SigLIP file that is there but
        is not SigLIP-so400m-384 in the layout ComfyUI's CLIPVisionLoader reads (its header, no weights)."""
        from ..pipelines.local.instantcharacter import siglip_file

        lines = files.check_names({"siglip": siglip, "dinov2": dinov2})
        if not lines and siglip_file.is_file_choice(siglip) and siglip in siglip_files():
            if problem := siglip_file.file_problem(files.find_file(("clip_vision",), siglip)):
                lines.append(f"siglip: {problem}")
        if lines:
            raise files.InputProblems(lines)
        return True

    @classmethod
    def execute(cls, siglip, dinov2, dtype) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..pipelines.local.instantcharacter.siglip_file import EXTENSIONS, is_file_choice
        from .local import _image_encoder_problem

        paths = {}
        if is_file_choice(siglip):
            paths["siglip"] = files.listed_file("siglip", siglip, ("clip_vision",), EXTENSIONS)
        for name, value in (("siglip", siglip), ("dinov2", dinov2)):
            if name in paths:
                continue
            paths[name] = files.listed_folder(name, value, "clip_vision", files.image_encoder_options())
            if problems := _image_encoder_problem(name, value, paths[name]):
                raise ValueError("\n".join(problems))
        torch_dtype = resolve_dtype(dtype, mm.get_torch_device())
        return io.NodeOutput(load_encoders(paths["siglip"], paths["dinov2"], torch_dtype,
                                           ComfyModelManagement(InstantCharacterEncoderWeights)))


def siglip_files() -> list[str]:
    from ..pipelines.local.instantcharacter.siglip_file import EXTENSIONS

    return files.files_of(("clip_vision",), EXTENSIONS)


def siglip_options() -> list[str]:
    """SigLIP folders, and the single files of models/clip_vision (which one is SigLIP is checked at
    queue time, from its header)."""
    folders = [name for name in files.image_encoder_options() if name != files.NONE_FOUND]
    return files.or_none(folders + siglip_files())


def load_encoders(siglip, dinov2_folder, dtype: torch.dtype, host=None) -> LoadedEncoders:
    """SigLIP from its Hugging Face folder or from the single file (Redux's), DINOv2 from its folder."""
    import os

    from ..pipelines.local.instantcharacter.loading import load_image_encoders
    from ..pipelines.local.instantcharacter.siglip_file import load_image_encoders_with_siglip_file

    if os.path.isfile(siglip):
        encoders = load_image_encoders_with_siglip_file(siglip, dinov2_folder, dtype)
    else:
        encoders = load_image_encoders(siglip, dinov2_folder, dtype)
    return LoadedEncoders(encoders, dtype, host)


class ApplyInstantCharacter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("ApplyInstantCharacter"), display_name="Apply InstantCharacter (native)",
            category=CATEGORY_LOCAL,
            description="Patches your FLUX.1 MODEL (any loader, LoRAs, fp8/GGUF) with InstantCharacter's subject "
                        "branch for KSampler / SamplerCustomAdvanced. Apply once per MODEL.",
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1 model (UNETLoader, CheckpointLoaderSimple, a GGUF loader)."),
                AdapterSocket.Input("adapter", tooltip="From Load InstantCharacter Adapter (native)."),
                EncodersSocket.Input("image_encoders", tooltip="From Load InstantCharacter Image Encoders."),
                io.Image.Input("reference", tooltip="The character: one image."),
                io.Float.Input("weight", default=0.9, min=0.0, max=2.0, step=0.01,
                               tooltip="Subject scale: how strongly the character is imposed (0 = the model as it was)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="From this point of the schedule (read with the MODEL's sampling as it is here)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Until this point of the schedule."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, adapter, image_encoders, reference, weight, start_percent, end_percent) -> io.NodeOutput:
        import logging

        import comfy.model_management as mm

        from .generator_inputs import single_image

        check_adapter_fits(adapter.adapter, flux_diffusion_model(model))      # before any encoding
        features = image_encoders.features(single_image(reference, "reference"), mm.get_torch_device())
        patched, mechanism = apply_instantcharacter(model, adapter, features, weight, start_percent, end_percent)
        logging.getLogger("character_identity").info("InstantCharacter applied to the MODEL through %s", mechanism)
        return io.NodeOutput(patched)


NATIVE_INSTANTCHARACTER_NODES = [LoadInstantCharacterAdapter, LoadInstantCharacterEncoders, ApplyInstantCharacter]
