"""The InstantCharacter generation loop on diffusers' FLUX building blocks.

Same seed, same image as the reference: the text is encoded by diffusers' FluxPipeline.encode_prompt,
the noise drawn by its prepare_latents from a CPU generator seeded with the seed, the sigmas are
linspace(1, 1/N, N) with FLUX's dynamic shift, the subject projector runs at every step on the raw
scheduler timestep (the transformer gets timestep / 1000), and a true-CFG pass (true_cfg_scale > 1)
carries the subject tokens too.

What makes a rerun cheap lives on this object (never in module globals): prompt embeddings per
prompt, reference features per image content, subject tokens per (reference, timestep). A new seed
with the same reference and prompt encodes nothing again.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np
import torch
from PIL import Image

from ..caching import LRU, image_key
from ..progress import StepInfo
from .adapter import ReferenceFeatures, SubjectAdapter, SubjectTokens
from .features import reference_features

DEFAULTS = {"steps": 28, "guidance": 3.5, "subject_scale": 0.9, "width": 1024, "height": 1024,
            "max_sequence_length": 512, "true_cfg_scale": 1.0}


@dataclass
class Counters:
    """How often each encoder ran: the benchmark prints these per rerun."""

    text_encoder: int = 0
    image_encoders: int = 0
    projector: int = 0
    transformer: int = 0


@dataclass
class ImageEncoders:
    siglip: Any
    siglip_processor: Any
    dinov2: Any
    dinov2_processor: Any


@dataclass
class InstantCharacterPipeline:
    """FLUX (diffusers FluxPipeline components) + image encoders + the subject adapter.

    `placement` moves a component to the compute device for the duration of a phase and back
    (model offload); with everything resident it does nothing."""

    flux: Any                         # diffusers.FluxPipeline (components only; its __call__ is not used)
    encoders: ImageEncoders
    adapter: SubjectAdapter
    device: torch.device
    dtype: torch.dtype
    placement: Any = None             # memory.Placement
    counters: Counters = field(default_factory=Counters)
    prompt_cache: LRU = field(default_factory=lambda: LRU(16))
    reference_cache: LRU = field(default_factory=lambda: LRU(4))
    token_cache: LRU = field(default_factory=lambda: LRU(64))      # ~2 schedules of 28 steps
    lora_cache: LRU = field(default_factory=lambda: LRU(2))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.placement is None:
            from ..memory import Placement

            self.placement = Placement(self.device, offload=False)

    # ---- encoders, cached ------------------------------------------------------------------

    def encode_prompt(self, prompt: str, max_sequence_length: int, text_variant: Hashable = None):
        """`text_variant` names what changes the text encoder (a LoRA on CLIP-L and its strength)."""
        def make():
            self.counters.text_encoder += 1
            with self.placement.on_device(self.flux.text_encoder, self.flux.text_encoder_2):
                embeds, pooled, text_ids = self.flux.encode_prompt(
                    prompt=prompt, prompt_2=None, device=self.device, num_images_per_prompt=1,
                    max_sequence_length=max_sequence_length)
            return embeds.to(self.dtype), pooled.to(self.dtype), text_ids
        return self.prompt_cache.fetch((prompt, max_sequence_length, self.dtype, text_variant), make)

    def encode_reference(self, reference: Image.Image) -> tuple[str, ReferenceFeatures]:
        key = image_key(reference)

        def make():
            self.counters.image_encoders += 1
            encoders = self.encoders
            with self.placement.on_device(encoders.siglip, encoders.dinov2):
                return reference_features(reference, encoders.siglip, encoders.siglip_processor, encoders.dinov2,
                                          encoders.dinov2_processor, self.device, self.dtype)
        return key, self.reference_cache.fetch((key, self.dtype), make)

    def load_lora(self, path) -> "LoRA":
        """A parsed LoRA file, kept while it is in use (a changed file is read again)."""
        from pathlib import Path

        from .lora import read_lora

        stat = Path(path).stat()
        config = self.flux.transformer.config
        key = (str(path), stat.st_mtime_ns, stat.st_size)

        def make():
            lora = read_lora(path, config.num_attention_heads * config.attention_head_dim)
            lora.key = key
            return lora
        return self.lora_cache.fetch(key, make)

    def subject_tokens(self, reference_key: str, features: ReferenceFeatures, timestep: torch.Tensor) -> torch.Tensor:
        def make():
            self.counters.projector += 1
            with torch.inference_mode():
                return self.adapter.projector(features.to(self.device, self.dtype), timestep.to(self.dtype))
        return self.token_cache.fetch((reference_key, float(timestep), self.dtype), make)

    # ---- generation ------------------------------------------------------------------------

    def schedule(self, steps: int, image_seq_len: int):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        scheduler = self.flux.scheduler
        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift(image_seq_len, scheduler.config.get("base_image_seq_len", 256),
                             scheduler.config.get("max_image_seq_len", 4096),
                             scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas, mu=mu)
        return timesteps

    @torch.inference_mode()
    def generate(self, reference: Image.Image | None, prompt: str, negative_prompt: str = "", *,
                 width: int = 1024, height: int = 1024, seed: int = 0, steps: int = 28, guidance: float = 3.5,
                 num_images: int = 1, subject_scale: float = 0.9, true_cfg_scale: float = 1.0,
                 max_sequence_length: int = 512, output: str = "pil", lora=None, lora_strength: float = 1.0,
                 on_step: Callable[[StepInfo], None] | None = None):
        """→ PIL images (output="pil"), a float tensor [B,3,H,W] in 0..1 ("pt") or the packed
        latents ("latent"). `lora` (a parsed LoRA) is applied for this call only. `on_step` runs
        after every step (progress, preview); raising there stops."""
        from .lora import lora_applied

        flux = self.flux
        multiple = flux.vae_scale_factor * 2
        if width % multiple or height % multiple:
            raise ValueError(f"width and height must be multiples of {multiple} (got {width}x{height})")
        text_variant = (lora.key, lora_strength) if lora is not None and lora.text_encoder else None
        with self.lock, lora_applied(flux.transformer, flux.text_encoder, lora, lora_strength):
            embeds, pooled, text_ids = self.encode_prompt(prompt, max_sequence_length, text_variant)
            use_cfg = true_cfg_scale > 1
            if use_cfg:
                negative_embeds, negative_pooled, _ = self.encode_prompt(negative_prompt, max_sequence_length,
                                                                         text_variant)
            reference_key, features = self.encode_reference(reference) if reference is not None else (None, None)

            generator = torch.Generator("cpu").manual_seed(int(seed))
            channels = flux.transformer.config.in_channels // 4
            latents, image_ids = flux.prepare_latents(num_images, channels, height, width, embeds.dtype, self.device,
                                                      generator)
            timesteps = self.schedule(steps, latents.shape[1])
            guidance_vector = None
            if flux.transformer.config.guidance_embeds:
                guidance_vector = torch.full([1], guidance, device=self.device, dtype=torch.float32).expand(num_images)

            def batched(x):
                return x.expand(num_images, *x.shape[1:])

            with self.placement.on_device(flux.transformer, self.adapter.projector):
                for index, t in enumerate(timesteps):
                    timestep = t.expand(num_images).to(latents.dtype)
                    attention_kwargs = {}
                    if features is not None:
                        tokens = self.subject_tokens(reference_key, features, timestep[:1])
                        attention_kwargs["subject"] = SubjectTokens(tokens, float(subject_scale), embeds.shape[1])
                    prediction = self._transformer(latents, timestep, guidance_vector, batched(pooled), batched(embeds),
                                                   text_ids, image_ids, attention_kwargs)
                    if use_cfg:
                        negative = self._transformer(latents, timestep, guidance_vector, batched(negative_pooled),
                                                     batched(negative_embeds), text_ids, image_ids, attention_kwargs)
                        prediction = negative + true_cfg_scale * (prediction - negative)
                    if on_step is not None:      # flow matching: x0 = x_t - sigma_t * velocity
                        denoised = latents - flux.scheduler.sigmas[index] * prediction
                        on_step_info = StepInfo(index + 1, len(timesteps), flux._unpack_latents(
                            denoised, height, width, flux.vae_scale_factor))
                    latents = flux.scheduler.step(prediction, t, latents, return_dict=False)[0]
                    if on_step is not None:
                        on_step(on_step_info)

            if output == "latent":
                return latents
            with self.placement.on_device(flux.vae):
                unpacked = flux._unpack_latents(latents, height, width, flux.vae_scale_factor)
                unpacked = unpacked / flux.vae.config.scaling_factor + flux.vae.config.shift_factor
                decoded = flux.vae.decode(unpacked.to(flux.vae.dtype), return_dict=False)[0]
            return flux.image_processor.postprocess(decoded, output_type="pt" if output == "pt" else "pil")

    def _transformer(self, latents, timestep, guidance, pooled, embeds, text_ids, image_ids, attention_kwargs):
        self.counters.transformer += 1
        return self.flux.transformer(
            hidden_states=latents, timestep=timestep / 1000, guidance=guidance, pooled_projections=pooled,
            encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids,
            joint_attention_kwargs=attention_kwargs, return_dict=False)[0]
