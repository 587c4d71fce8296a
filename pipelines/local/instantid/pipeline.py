"""The InstantID generation loop on diffusers' SDXL building blocks.

Same seed, same image as the reference (the demo's `pipeline_stable_diffusion_xl_instantid_full.py`):
prompts encoded with weights (prompts.py); the face embedding and a zero embedding (the negative)
turned into face tokens by the resampler; noise drawn by a CPU generator seeded with the seed, that
generator also handed to the scheduler's steps; the IdentityNet given only the face tokens and the
keypoint image, its residuals scaled by `identity_strength`; the UNet given the text tokens followed
by the face tokens, the face branch scaled by `adapter_strength`; classifier-free guidance above
guidance 1. With `enhance_face_region`, the IdentityNet residuals are multiplied by the face box
downscaled bilinearly to each residual's size and the face branch by the box (nearest) at each
layer — the box travels with the call, never in a module global.

Several images of one call share the prompt and face and draw their noise as one batch; the first
image of a batch is the image of that seed alone.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..caching import LRU
from ..progress import StepInfo
from .adapter import FaceAdapter, FaceContext, install_face_adapter
from .conditioning import FaceConditioning, face_mask, keypoint_image
from .face_input import face_from_images
from .prompts import PromptEmbeddings, encode_weighted

DEFAULTS = {"steps": 30, "guidance": 5.0, "identity_strength": 0.8, "adapter_strength": 0.8,
            "enhance_face_region": True}
LCM_DEFAULTS = {"steps": 5, "guidance": 1.5}
SCHEDULERS = ("euler", "lcm")


@dataclass
class Counters:
    """How often each model ran: the benchmark prints these per rerun."""

    text_encoders: int = 0
    resampler: int = 0
    controlnet: int = 0
    unet: int = 0


@dataclass
class SDXLModels:
    unet: Any
    controlnet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    scheduler_config: dict


@dataclass
class InstantIDPipeline:
    """SDXL + IdentityNet + the face adapter (+ the face analyser, when loaded)."""

    models: SDXLModels
    adapter: FaceAdapter
    device: torch.device
    dtype: torch.dtype
    faces: Any = None                  # pipelines.local.faces.FaceAnalyzer, or None: faces given precomputed
    placement: Any = None              # memory.Placement
    lcm: Any = None                    # a parsed LCM-LoRA (lora.LoRA), for scheduler="lcm"
    counters: Counters = field(default_factory=Counters)
    prompt_cache: LRU = field(default_factory=lambda: LRU(16))
    token_cache: LRU = field(default_factory=lambda: LRU(8))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.placement is None:
            from ..memory import Placement

            self.placement = Placement(self.device, offload=False)
        install_face_adapter(self.models.unet, self.adapter)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.models.vae.config.block_out_channels) - 1)

    # ---- faces ---------------------------------------------------------------------------

    def face_from_images(self, reference: Image.Image, pose: Image.Image | None = None) -> FaceConditioning:
        """The demo's preparation (face_input.face_from_images, shared with the InstantID Face node):
        the identity from the reference's largest face; keypoints, box and output size from the pose
        photo (its last face) or else from the reference."""
        if self.faces is None:
            raise ValueError("this InstantID pipeline was loaded without face models (antelopev2); pass a "
                             "precomputed face instead of images")
        return face_from_images(self.faces, reference, pose)

    # ---- encoders, cached ------------------------------------------------------------------

    def encode_prompt(self, prompt: str, negative_prompt: str) -> PromptEmbeddings:
        models = self.models

        def make():
            self.counters.text_encoders += 1
            with self.placement.on_device(models.text_encoder, models.text_encoder_2):
                return encode_weighted(models.tokenizer, models.text_encoder, models.text_encoder_2, prompt,
                                       negative_prompt, self.device)
        return self.prompt_cache.fetch((prompt, negative_prompt, self.dtype), make)

    def face_tokens(self, embedding: np.ndarray, guided: bool) -> torch.Tensor:
        """[2, T, D] (zero embedding, face) with guidance, else [1, T, D]."""
        resampler = self.adapter.resampler

        def make():
            self.counters.resampler += 1
            face = torch.from_numpy(np.ascontiguousarray(embedding)).reshape(1, -1, resampler.size.embedding_dim)
            batch = torch.cat([torch.zeros_like(face), face]) if guided else face
            with self.placement.on_device(resampler):
                return resampler(batch.to(self.device, resampler.latents.dtype))
        return self.token_cache.fetch((embedding.tobytes(), guided, self.dtype), make)

    # ---- generation ------------------------------------------------------------------------

    def make_scheduler(self, kind: str):
        from diffusers import EulerDiscreteScheduler, LCMScheduler

        if kind not in SCHEDULERS:
            raise ValueError(f"scheduler {kind!r} is not one of {', '.join(SCHEDULERS)}")
        cls = EulerDiscreteScheduler if kind == "euler" else LCMScheduler
        # only the settings this scheduler has (diffusers logs every other one, at every call)
        accepted = set(inspect.signature(cls.__init__).parameters)
        return cls.from_config({k: v for k, v in self.models.scheduler_config.items() if k in accepted})

    @torch.inference_mode()
    def generate(self, face: FaceConditioning, prompt: str, negative_prompt: str = "", *, width: int = 0,
                 height: int = 0, seed: int = 0, steps: int = 30, guidance: float = 5.0, num_images: int = 1,
                 identity_strength: float = 0.8, adapter_strength: float = 0.8, enhance_face_region: bool = True,
                 scheduler: str = "euler", output: str = "pil", on_step: Callable[[StepInfo], None] | None = None):
        """→ PIL images (output="pil"), a float tensor [B,3,H,W] in 0..1 ("pt") or latents ("latent").
        `width`/`height` 0: the face's canvas size. `on_step` runs after every step (progress,
        preview); raising there stops."""
        from diffusers.image_processor import VaeImageProcessor
        from diffusers.utils.torch_utils import randn_tensor

        models = self.models
        width, height = int(width or face.size[0]), int(height or face.size[1])
        if width % 8 or height % 8:
            raise ValueError(f"width and height must be multiples of 8 (got {width}x{height})")
        face = face.on_canvas(width, height)
        if enhance_face_region and face.bbox is None:
            raise ValueError("enhance_face_region needs the face box; give the face's bbox or turn it off")
        if scheduler == "lcm" and self.lcm is None:
            raise ValueError("the LCM fast mode needs the LCM-LoRA for SDXL; choose it in the loader")
        guided = guidance > 1 and models.unet.config.time_cond_proj_dim is None

        lcm = self.lcm if scheduler == "lcm" else None
        with self.lock, (lcm.applied_to(models.unet) if lcm is not None else contextlib.nullcontext()):
            text = self.encode_prompt(prompt, negative_prompt)
            tokens = self.face_tokens(face.embedding, guided).to(self.dtype)
            tokens = tokens.repeat(1, num_images, 1).view(tokens.shape[0] * num_images, *tokens.shape[1:])

            condition = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True,
                                          do_normalize=False).preprocess(keypoint_image(face), height=height,
                                                                         width=width).to(dtype=torch.float32)
            condition = condition.repeat_interleave(num_images, dim=0).to(self.device, models.controlnet.dtype)

            region = None
            if enhance_face_region:
                region = face_mask(face.bbox, face.size).to(self.device, text.embeds.dtype)

            noise_scheduler = self.make_scheduler(scheduler)
            noise_scheduler.set_timesteps(steps, device=self.device)
            timesteps = noise_scheduler.timesteps
            generator = torch.Generator("cpu").manual_seed(int(seed))
            shape = (num_images, models.unet.config.in_channels, height // self.vae_scale_factor,
                     width // self.vae_scale_factor)
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=text.embeds.dtype)
            latents = latents * noise_scheduler.init_noise_sigma

            pooled_dim = models.text_encoder_2.config.projection_dim
            time_ids = self._time_ids((height, width), (height, width), pooled_dim, text.embeds.dtype)
            embeds, pooled, time_ids = (text.embeds.repeat(num_images, 1, 1), text.pooled.repeat(num_images, 1),
                                        time_ids.repeat(num_images, 1))
            if guided:
                embeds = torch.cat([text.negative_embeds.repeat(num_images, 1, 1), embeds])
                pooled = torch.cat([text.negative_pooled.repeat(num_images, 1), pooled])
                time_ids = torch.cat([time_ids, time_ids])
                condition = torch.cat([condition, condition])
            embeds, pooled, time_ids = embeds.to(self.device), pooled.to(self.device), time_ids.to(self.device)
            added = {"text_embeds": pooled, "time_ids": time_ids}
            encoder_states = torch.cat([embeds, tokens], dim=1)
            face_context = FaceContext(tokens.shape[1], float(adapter_strength),
                                       None if region is None else region.to(models.unet.dtype))
            step_options = {"generator": generator}

            with self.placement.on_device(models.unet, models.controlnet):
                for index, t in enumerate(timesteps):
                    model_input = torch.cat([latents] * 2) if guided else latents
                    model_input = noise_scheduler.scale_model_input(model_input, t)
                    self.counters.controlnet += 1
                    down, mid = models.controlnet(model_input, t, encoder_hidden_states=tokens, controlnet_cond=condition,
                                                  conditioning_scale=float(identity_strength), guess_mode=False,
                                                  added_cond_kwargs=added, return_dict=False)
                    if region is not None:
                        down = [residual * _region_at(region, residual) for residual in down]
                        mid = mid * _region_at(region, mid)
                    self.counters.unet += 1
                    prediction = models.unet(model_input, t, encoder_hidden_states=encoder_states,
                                             cross_attention_kwargs={"face": face_context},
                                             down_block_additional_residuals=down, mid_block_additional_residual=mid,
                                             added_cond_kwargs=added, return_dict=False)[0]
                    if guided:
                        unconditional, conditional = prediction.chunk(2)
                        prediction = unconditional + guidance * (conditional - unconditional)
                    result = noise_scheduler.step(prediction, t, latents, **step_options, return_dict=True)
                    latents = result.prev_sample
                    if on_step is not None:
                        denoised = getattr(result, "pred_original_sample", None)
                        if denoised is None:
                            denoised = getattr(result, "denoised", latents)
                        on_step(StepInfo(index + 1, len(timesteps), denoised))

            if output == "latent":
                return latents
            return self.decode(latents, output)

    def decode(self, latents: torch.Tensor, output: str = "pil"):
        from diffusers.image_processor import VaeImageProcessor

        vae = self.models.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast      # SDXL's VAE overflows in fp16
        with self.placement.on_device(vae):
            if upcast:
                vae.to(torch.float32)
            try:
                latents = latents.to(next(vae.post_quant_conv.parameters()).dtype)
                mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
                if mean is not None and std is not None:
                    channels = latents.shape[1]
                    mean = torch.tensor(mean).view(1, channels, 1, 1).to(latents.device, latents.dtype)
                    std = torch.tensor(std).view(1, channels, 1, 1).to(latents.device, latents.dtype)
                    latents = latents * std / vae.config.scaling_factor + mean
                else:
                    latents = latents / vae.config.scaling_factor
                decoded = vae.decode(latents, return_dict=False)[0]
            finally:
                if upcast:
                    vae.to(torch.float16)
        processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        return processor.postprocess(decoded, output_type="pt" if output == "pt" else "pil")

    def _time_ids(self, original: tuple[int, int], target: tuple[int, int], pooled_dim: int, dtype) -> torch.Tensor:
        values = list(original + (0, 0) + target)
        unet = self.models.unet
        expected = unet.add_embedding.linear_1.in_features
        if unet.config.addition_time_embed_dim * len(values) + pooled_dim != expected:
            raise ValueError(f"this UNet expects an added condition of {expected} values; SDXL's text encoders and "
                             f"size conditioning give {unet.config.addition_time_embed_dim * len(values) + pooled_dim}")
        return torch.tensor([values], dtype=dtype)


def _region_at(region: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The face box at a residual's resolution, bilinear as the demo scales it."""
    return F.interpolate(region[None, None], size=tuple(residual.shape[-2:]), mode="bilinear")
