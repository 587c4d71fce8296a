"""Generation back-ends and the contract they share. Knows nothing of ComfyUI.

Importing this package is cheap: heavy libraries (diffusers, transformers) are imported only
inside the local pipelines, when a model is actually loaded.
"""
from .contract import (
    SEED_MAX,
    BackendLimits,
    Choice,
    DetachedRunContext,
    Flag,
    GenerationBackend,
    GenerationInterrupted,
    GenerationRequest,
    GenerationResult,
    ImageInput,
    NumberRange,
    RequestValidationError,
    RunContext,
)
from .images import (
    WHITE,
    ImageDecodeError,
    ImageShapeError,
    decode_image,
    encode_image,
    flatten_to_rgb,
    image_batch_to_pil,
    parse_color,
    pil_to_image_batch,
)
from .reference import FIT_MODES, prepare_reference

__all__ = [
    "SEED_MAX", "BackendLimits", "Choice", "DetachedRunContext", "Flag", "GenerationBackend", "GenerationInterrupted",
    "GenerationRequest", "GenerationResult", "ImageInput", "NumberRange", "RequestValidationError",
    "RunContext", "WHITE", "ImageDecodeError", "ImageShapeError", "decode_image", "encode_image",
    "flatten_to_rgb", "image_batch_to_pil", "parse_color", "pil_to_image_batch", "FIT_MODES",
    "prepare_reference",
]
