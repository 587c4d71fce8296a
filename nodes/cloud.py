"""Cloud generator nodes: WaveSpeed InstantCharacter, fal InstantCharacter, Segmind InstantID.

Thin adapters: widgets → GenerationRequest → pipelines.cloud backend (configured from the
environment at run time) → IMAGE + info. Keys never appear here: the backend reads them from the
environment or the user's keys file. `CloudGeneratorNode` holds everything the nodes share; each
node declares its provider, its schema and how its own widgets become request extras.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar

from comfy_api.latest import io

from ..pipelines.cloud import PROVIDERS, backend_from_environment
from ..pipelines.cloud import fal as fal_protocol
from ..pipelines.cloud import segmind as segmind_protocol
from ..pipelines.cloud import wavespeed as wavespeed_protocol
from ..pipelines.cloud.pricing import Price
from .common import CATEGORY_CLOUD, node_id
from .generator_inputs import (COMMON_INPUTS, Defaults, build_request, float_input, generator_schema, single_image,
                               validate_prompt)
from .runtime import generate, pack_state_dir

PRIVACY = " The reference image is sent to the provider."


def price_expression(price: Price, image_size_presets: dict[str, tuple[int, int]] | None = None) -> str:
    """The estimate as a JSONata expression over the node's widgets, the language of ComfyUI's native
    price badges. It gives the same text as the browser extension's own badge (web/character_identity.js,
    costText): "≈ $0.21 per run", "≈ $0.025 per run", "price: see provider"; an empty text (no badge)
    while a size is missing. A plain text result, not "usd": the frontend would turn US$ into Comfy
    credits, which these providers do not bill."""
    def text(expression: str) -> str:
        return '{"type": "text", "text": ' + expression + "}"

    if price.per_megapixel is not None:
        presets = json.dumps({name: list(size) for name, size in (image_size_presets or {}).items()})
        return ("($size := $lookup(" + presets + ", widgets.image_size);"
                " $w := $exists($size) ? $size[0] : widgets.width;"
                " $h := $exists($size) ? $size[1] : widgets.height;"
                ' $n := $type(widgets.num_images) = "number" ? widgets.num_images : 1;'
                ' $sized := $type($w) = "number" and $type($h) = "number" ? ($w > 0 and $h > 0) : false;'
                f" $d := $sized ? {price.per_megapixel!r} * $w * $h / 1000000 * $n : 0;"
                " $sized ? " + text('"≈ $" & $formatNumber($d, $d < 0.1 ? "0.000" : "0.00") & " per run"')
                + " : " + text('""') + ")")
    if price.per_call is not None:
        return text(json.dumps(f"{'≈ ' if price.approximate else ''}${price.per_call!r} per run", ensure_ascii=False))
    return text('"price: see provider"')


def with_native_price(schema: io.Schema, provider: str,
                      image_size_presets: dict[str, tuple[int, int]] | None = None) -> io.Schema:
    """Where the running ComfyUI's V3 API has price badges (io.PriceBadge, ComfyUI 0.9.1 and newer,
    whose pinned frontends draw them), the node declares its estimate there and is flagged as an API
    node, which the frontend requires to draw a price. The browser extension then adds no badge of
    its own (it does for older ComfyUI), so a node shows one price."""
    if not hasattr(io, "PriceBadge"):
        return schema
    price = PROVIDERS[provider].price
    # the widgets the estimate reads, so the frontend re-evaluates it when one changes
    widgets = ["width", "height", "num_images", *(["image_size"] if image_size_presets else [])] \
        if price.per_megapixel is not None else []
    schema.is_api_node = True
    schema.price_badge = io.PriceBadge(expr=price_expression(price, image_size_presets),
                                       depends_on=io.PriceBadgeDepends(widgets=widgets))
    return schema


class CloudGeneratorNode(io.ComfyNode):
    """The shared part of every cloud node: queue-time checks, and execute = common sockets +
    this node's extras → the provider's backend → images + info."""

    PROVIDER: ClassVar[str]

    @classmethod
    def validate_inputs(cls, prompt=None) -> bool | str:
        return validate_prompt(prompt)

    @classmethod
    def extras(cls, options: dict[str, Any]) -> dict[str, Any]:
        """This node's own widgets → the backend's request extras (default: passed as they are)."""
        return options

    @classmethod
    async def execute(cls, **inputs) -> io.NodeOutput:
        common = [inputs.pop(name, None) for name in COMMON_INPUTS]
        api_version = inputs.pop("api_version", None)
        request = build_request(*common, cls.extras(inputs))
        backend = backend_from_environment(cls.PROVIDER, api_version, pack_state_dir())
        return io.NodeOutput(*await generate(backend, request, cls.hidden.unique_id))


class WaveSpeedInstantCharacterNode(CloudGeneratorNode):
    PROVIDER = "wavespeed"

    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = wavespeed_protocol.DEFAULTS
        return with_native_price(generator_schema(
            node_id("WaveSpeedInstantCharacter"), "InstantCharacter (WaveSpeed cloud)", CATEGORY_CLOUD,
            "InstantCharacter on WaveSpeed AI (API v3, or v2). Key: WAVESPEED_API_KEY." + PRIVACY,
            wavespeed_protocol.LIMITS["v3"], Defaults(steps=defaults["steps"], guidance=defaults["guidance"], strength=1.0),
            "WaveSpeed has no subject-scale parameter: not sent (kept so nodes swap).",
            [
                io.Combo.Input("api_version", options=list(wavespeed_protocol.API_VERSIONS), default="v3"),
                io.Boolean.Input("enable_safety_checker", default=defaults["enable_safety_checker"]),
            ],
        ), cls.PROVIDER)


class FalInstantCharacterNode(CloudGeneratorNode):
    PROVIDER = "fal"

    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = fal_protocol.DEFAULTS
        return with_native_price(generator_schema(
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
        ), cls.PROVIDER, fal_protocol.IMAGE_SIZE_PRESETS)


CUSTOM_STYLE = "custom"


class SegmindInstantIDNode(CloudGeneratorNode):
    PROVIDER = "segmind"

    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = segmind_protocol.DEFAULTS
        limits = segmind_protocol.LIMITS["v1"]
        return with_native_price(generator_schema(
            node_id("SegmindInstantID"), "InstantID (Segmind cloud)", CATEGORY_CLOUD,
            "InstantID on Segmind (v1 blocking, or v2 queued). Key: SEGMIND_API_KEY. The result is scaled and "
            "centre-cropped to width×height." + PRIVACY,
            limits,
            Defaults(steps=defaults["steps"], guidance=defaults["guidance"], strength=defaults["identity_strength"]),
            "Segmind identity_strength (IdentityNet strength, 0–1).",
            [
                io.Combo.Input("api_version", options=list(segmind_protocol.API_VERSIONS), default="v1"),
                io.Combo.Input("style", options=[*segmind_protocol.KNOWN_STYLES, CUSTOM_STYLE],
                               default=defaults["style"],
                               tooltip="Segmind allows 29 styles and names these; choose 'custom' to type another."),
                io.String.Input("custom_style", default="", tooltip="Used when style is 'custom'."),
                float_input("adapter_strength", limits.extras["adapter_strength"], defaults["adapter_strength"]),
                io.Boolean.Input("enhance_face_region", default=defaults["enhance_face_region"]),
                io.Image.Input("pose_image", optional=True, tooltip="Optional: the pose (and size) to follow."),
            ],
        ), cls.PROVIDER)

    @classmethod
    def validate_inputs(cls, prompt=None, style=None, custom_style=None) -> bool | str:
        if style == CUSTOM_STYLE and custom_style is not None and not custom_style.strip():
            return "custom_style: type a style name, or pick one from the style list"
        return validate_prompt(prompt)

    @classmethod
    def extras(cls, options: dict[str, Any]) -> dict[str, Any]:
        pose_image = options.get("pose_image")
        return {
            "style": options["custom_style"].strip() if options["style"] == CUSTOM_STYLE else options["style"],
            "adapter_strength": options["adapter_strength"],
            "enhance_face_region": options["enhance_face_region"],
            "pose_image": single_image(pose_image, "pose_image") if pose_image is not None else None,
        }


CLOUD_NODES = [WaveSpeedInstantCharacterNode, FalInstantCharacterNode, SegmindInstantIDNode]
