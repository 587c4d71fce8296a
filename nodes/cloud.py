"""Cloud generator nodes: WaveSpeed InstantCharacter, fal InstantCharacter, Segmind InstantID.

Thin adapters: widgets → GenerationRequest → pipelines.cloud backend (configured from the
environment at run time) → IMAGE + info. Keys never appear here: the backend reads them from the
environment or the user's keys file.
"""
from __future__ import annotations

import os

from comfy_api.latest import io

from ..pipelines.cloud import backend_from_environment
from ..pipelines.cloud import fal as fal_protocol
from ..pipelines.cloud import segmind as segmind_protocol
from ..pipelines.cloud import wavespeed as wavespeed_protocol
from .common import CATEGORY_CLOUD, node_id
from .generator_inputs import Defaults, build_request, generator_schema, single_image, validate_prompt
from .runtime import generate, pack_state_dir

PRIVACY = " The reference image is sent to the provider."


def upload_cache_path() -> str:
    return os.path.join(pack_state_dir(), "upload_cache.json")


class WaveSpeedInstantCharacterNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = wavespeed_protocol.DEFAULTS
        return generator_schema(
            node_id("WaveSpeedInstantCharacter"), "InstantCharacter (WaveSpeed cloud)", CATEGORY_CLOUD,
            "InstantCharacter on WaveSpeed AI (API v3, or v2). Key: WAVESPEED_API_KEY." + PRIVACY,
            wavespeed_protocol.LIMITS["v3"], Defaults(steps=defaults["steps"], guidance=defaults["guidance"], strength=1.0),
            "WaveSpeed has no subject-scale parameter: not sent (kept so nodes swap).",
            [
                io.Combo.Input("api_version", options=list(wavespeed_protocol.API_VERSIONS), default="v3",
                               tooltip="v3 takes 256–1536 px per side; v2 takes 512–1536."),
                io.Boolean.Input("enable_safety_checker", default=defaults["enable_safety_checker"]),
            ],
        )

    @classmethod
    def validate_inputs(cls, prompt=None) -> bool | str:
        return validate_prompt(prompt)

    @classmethod
    async def execute(cls, reference, prompt, negative_prompt, width, height, seed, steps, guidance, num_images,
                      strength, api_version, enable_safety_checker) -> io.NodeOutput:
        request = build_request(reference, prompt, negative_prompt, width, height, seed, steps, guidance, num_images,
                                strength, {"enable_safety_checker": enable_safety_checker})
        backend = backend_from_environment("wavespeed", api_version, upload_cache_path())
        return io.NodeOutput(*await generate(backend, request, cls.hidden.unique_id))


class FalInstantCharacterNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = fal_protocol.DEFAULTS
        return generator_schema(
            node_id("FalInstantCharacter"), "InstantCharacter (fal cloud)", CATEGORY_CLOUD,
            "fal-ai/instant-character through fal's queue. Key: FAL_KEY. Cancel also cancels the job at fal." + PRIVACY,
            fal_protocol.LIMITS,
            Defaults(steps=defaults["steps"], guidance=defaults["guidance"], strength=defaults["identity_strength"]),
            "fal 'scale': how strongly the subject shows (0–2).",
            [
                io.Combo.Input("image_size", options=[fal_protocol.CUSTOM_SIZE, *fal_protocol.IMAGE_SIZE_PRESETS],
                               default=fal_protocol.CUSTOM_SIZE,
                               tooltip="custom uses width and height; a preset replaces them."),
                io.Combo.Input("output_format", options=["jpeg", "png"], default=defaults["output_format"]),
                io.Boolean.Input("enable_safety_checker", default=defaults["enable_safety_checker"]),
                io.Boolean.Input("sync_mode", default=defaults["sync_mode"],
                                 tooltip="Images come back inline and are not kept in fal's request history."),
            ],
        )

    @classmethod
    def validate_inputs(cls, prompt=None) -> bool | str:
        return validate_prompt(prompt)

    @classmethod
    async def execute(cls, reference, prompt, negative_prompt, width, height, seed, steps, guidance, num_images,
                      strength, image_size, output_format, enable_safety_checker, sync_mode) -> io.NodeOutput:
        request = build_request(reference, prompt, negative_prompt, width, height, seed, steps, guidance, num_images,
                                strength, {"image_size": image_size, "output_format": output_format,
                                           "enable_safety_checker": enable_safety_checker, "sync_mode": sync_mode})
        backend = backend_from_environment("fal", upload_cache=upload_cache_path())
        return io.NodeOutput(*await generate(backend, request, cls.hidden.unique_id))


CUSTOM_STYLE = "custom"


class SegmindInstantIDNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = segmind_protocol.DEFAULTS
        return generator_schema(
            node_id("SegmindInstantID"), "InstantID (Segmind cloud)", CATEGORY_CLOUD,
            "InstantID on Segmind (v1 blocking, or v2 queued). Key: SEGMIND_API_KEY. The result is scaled and "
            "centre-cropped to width×height." + PRIVACY,
            segmind_protocol.LIMITS["v1"],
            Defaults(steps=defaults["steps"], guidance=defaults["guidance"], strength=defaults["identity_strength"]),
            "Segmind identity_strength (IdentityNet strength, 0–1).",
            [
                io.Combo.Input("api_version", options=list(segmind_protocol.API_VERSIONS), default="v1"),
                io.Combo.Input("style", options=[*segmind_protocol.KNOWN_STYLES, CUSTOM_STYLE],
                               default=defaults["style"],
                               tooltip="Segmind allows 29 styles and names these; choose 'custom' to type another."),
                io.String.Input("custom_style", default="", tooltip="Used when style is 'custom'."),
                io.Float.Input("adapter_strength", default=defaults["adapter_strength"], min=0.0, max=1.0, step=0.05),
                io.Boolean.Input("enhance_face_region", default=defaults["enhance_face_region"]),
                io.Image.Input("pose_image", optional=True, tooltip="Optional: the pose (and size) to follow."),
            ],
        )

    @classmethod
    def validate_inputs(cls, prompt=None, style=None, custom_style=None) -> bool | str:
        if style == CUSTOM_STYLE and custom_style is not None and not custom_style.strip():
            return "custom_style: type a style name, or pick one from the style list"
        return validate_prompt(prompt)

    @classmethod
    async def execute(cls, reference, prompt, negative_prompt, width, height, seed, steps, guidance, num_images,
                      strength, api_version, style, custom_style, adapter_strength, enhance_face_region,
                      pose_image=None) -> io.NodeOutput:
        extras = {
            "style": custom_style.strip() if style == CUSTOM_STYLE else style,
            "adapter_strength": adapter_strength,
            "enhance_face_region": enhance_face_region,
            "pose_image": single_image(pose_image, "pose_image") if pose_image is not None else None,
        }
        request = build_request(reference, prompt, negative_prompt, width, height, seed, steps, guidance, num_images,
                                strength, extras)
        backend = backend_from_environment("segmind", api_version, upload_cache_path())
        return io.NodeOutput(*await generate(backend, request, cls.hidden.unique_id))


CLOUD_NODES = [WaveSpeedInstantCharacterNode, FalInstantCharacterNode, SegmindInstantIDNode]
