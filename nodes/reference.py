"""Prepare Character Reference: square the reference on a plain background before generation."""
from __future__ import annotations

from comfy_api.latest import io

from ..pipelines.images import ImageShapeError, parse_color
from ..pipelines.reference import FIT_MODES, prepare_reference
from .common import CATEGORY_REFERENCE, node_id


class PrepareCharacterReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("PrepareReference"),
            display_name="Prepare Character Reference",
            category=CATEGORY_REFERENCE,
            description=(
                "Squares a character reference on a plain background (white by default, as InstantCharacter "
                "recommends), optionally centre-crops, and resizes. Works on whole batches."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The character or face reference. RGBA alpha is flattened onto the background."),
                io.String.Input(
                    "background", default="#FFFFFF",
                    tooltip="Colour used for padding and for transparent or masked pixels: #RRGGBB or a name such as 'white'.",
                ),
                io.Combo.Input(
                    "fit", options=list(FIT_MODES), default="pad",
                    tooltip="pad: keep the whole image and pad it to a square. center_crop: cut the central square.",
                ),
                io.Int.Input(
                    "size", default=1024, min=0, max=4096, step=8,
                    tooltip="Side of the square output in pixels; 0 keeps the squared size.",
                ),
                io.Mask.Input(
                    "mask", optional=True,
                    tooltip="Optional: pixels where the mask is 1 become background (LoadImage's MASK marks transparent pixels this way).",
                ),
            ],
            outputs=[io.Image.Output(display_name="reference")],
        )

    @classmethod
    def validate_inputs(cls, background: str) -> bool | str:
        try:
            parse_color(background)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, image, background: str, fit: str, size: int, mask=None) -> io.NodeOutput:
        try:
            prepared = prepare_reference(image, parse_color(background), fit, size, mask)
        except ImageShapeError as exc:
            raise ValueError(f"Prepare Character Reference: {exc}") from None
        return io.NodeOutput(prepared)
