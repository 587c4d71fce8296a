"""The sockets every image-producing node shares, in one order, so a local node and a cloud node
swap without rewiring: reference, prompt, negative_prompt, width, height, seed, steps, guidance,
num_images, strength — then the backend's own options. Outputs: images, then info."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..pipelines import GenerationRequest, ImageShapeError, flatten_to_rgb, image_batch_to_pil
from ..pipelines.contract import BackendLimits, NumberRange

# The shared sockets, in order; every image-producing node starts with exactly these.
COMMON_INPUTS = ("reference", "prompt", "negative_prompt", "width", "height", "seed", "steps", "guidance",
                 "num_images", "strength")


@dataclass(frozen=True)
class Defaults:
    steps: int
    guidance: float
    strength: float
    width: int = 1024
    height: int = 1024
    size_step: int = 8


def float_input(name: str, spec: NumberRange, default: float, step: float = 0.05, **options) -> io.Float.Input:
    """A float widget whose range is the backend's declared range (never restated by hand)."""
    return io.Float.Input(name, default=default, min=spec.minimum, max=spec.maximum, step=step, **options)


def int_input(name: str, spec: NumberRange, default: int, **options) -> io.Int.Input:
    return io.Int.Input(name, default=default, min=int(spec.minimum), max=int(spec.maximum), **options)


def common_inputs(limits: BackendLimits, defaults: Defaults, strength_tooltip: str) -> list[io.Input]:
    return [
        io.Image.Input("reference", tooltip="The character or face to keep (one image)."),
        io.String.Input("prompt", multiline=True, default="", tooltip="What the new image shows."),
        io.String.Input("negative_prompt", multiline=True, default="", tooltip="What to avoid."),
        int_input("width", limits.width, defaults.width, step=defaults.size_step),
        int_input("height", limits.height, defaults.height, step=defaults.size_step),
        int_input("seed", limits.seed, 0, control_after_generate=True,
                  tooltip="Same seed + same inputs = same image." + (
                      " -1 lets the provider pick one (the info output reports it when the provider does)."
                      if limits.seed.minimum < 0 else "")),
        int_input("steps", limits.steps, defaults.steps),
        float_input("guidance", limits.guidance, defaults.guidance, step=0.1),
        int_input("num_images", limits.num_images, 1),
        float_input("strength", limits.identity_strength, defaults.strength, tooltip=strength_tooltip),
    ]


def common_outputs() -> list[io.Output]:
    return [
        io.Image.Output(display_name="images"),
        io.String.Output(display_name="info",
                         tooltip="JSON: backend, job id, seed used, timings, safety flags, cost where known."),
    ]


def generator_schema(name: str, display_name: str, category: str, description: str, limits: BackendLimits,
                     defaults: Defaults, strength_tooltip: str, options: list[io.Input]) -> io.Schema:
    """The schema of an image-producing node: common sockets, then `options`; images + info out."""
    return io.Schema(
        node_id=name, display_name=display_name, category=category, description=description,
        inputs=[*common_inputs(limits, defaults, strength_tooltip), *options],
        outputs=common_outputs(), hidden=[io.Hidden.unique_id],
    )


def single_image(tensor, what: str):
    """A one-image IMAGE tensor → RGB PIL image, or a clear error naming the shape."""
    try:
        images = image_batch_to_pil(tensor)
    except ImageShapeError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if len(images) != 1:
        raise ValueError(f"{what}: got a batch of {len(images)} images; connect one image "
                         "(an 'ImageFromBatch' node picks one)")
    return flatten_to_rgb(images[0])


def build_request(reference, prompt: str, negative_prompt: str, width: int, height: int, seed: int, steps: int,
                  guidance: float, num_images: int, strength: float, extras: dict[str, Any]) -> GenerationRequest:
    if reference is None:
        raise ValueError("reference: connect a reference image")
    return GenerationRequest(
        reference=single_image(reference, "reference"), prompt=prompt, negative_prompt=negative_prompt,
        width=width, height=height, seed=seed, steps=steps, guidance=guidance, num_images=num_images,
        identity_strength=strength, extras=extras,
    )


def validate_prompt(prompt: str | None) -> bool | str:
    """Queue-time check (the prompt is None when it comes from another node: checked at run time)."""
    if prompt is not None and not prompt.strip():
        return "prompt: the prompt must not be empty"
    return True


def validate_size_and_prompt(limits: BackendLimits, prompt: str | None, width: int | None,
                             height: int | None) -> bool | str:
    """Queue-time checks of a local generator, before its loader spends minutes on weights.
    (ComfyUI leaves the range of an input that validate_inputs takes to it, so the whole range is
    checked here.)"""
    from ..pipelines.contract import RequestValidationError

    for name, value in (("width", width), ("height", height)):
        if value is not None:
            try:
                getattr(limits, name).check(limits.backend, name, value)
            except RequestValidationError as exc:
                return str(exc)
    return validate_prompt(prompt)
