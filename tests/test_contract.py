"""The shared request/result contract and per-backend validation."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math

import pytest
from PIL import Image

from pipelines import (
    BackendLimits,
    Choice,
    DetachedRunContext,
    Flag,
    GenerationBackend,
    GenerationRequest,
    GenerationResult,
    ImageInput,
    NumberRange,
    RequestValidationError,
)

LIMITS = BackendLimits(
    backend="Test Backend",
    width=NumberRange(256, 1536, integer=True, multiple_of=16),
    height=NumberRange(256, 1536, integer=True, multiple_of=16),
    steps=NumberRange(1, 50, integer=True),
    guidance=NumberRange(0, 20),
    num_images=NumberRange(1, 4, integer=True),
    identity_strength=NumberRange(0, 2),
    extras={
        "style": Choice(("(No style)", "Watercolor"), open_ended=True),
        "output_format": Choice(("jpeg", "png")),
        "enable_safety_checker": Flag(),
        "pose_image": ImageInput(),
        "adapter_strength": NumberRange(0, 1),
    },
)


def request(**changes) -> GenerationRequest:
    base = GenerationRequest(reference=Image.new("RGB", (64, 64), "white"), prompt="a knight in a forest")
    return dataclasses.replace(base, **changes)


def test_a_request_inside_every_limit_passes():
    LIMITS.validate(request(width=1536, height=256, seed=2**31 - 1, steps=50, guidance=0, num_images=4,
                            identity_strength=2, extras={"style": "Watercolor", "enable_safety_checker": False}))


@pytest.mark.parametrize(
    ("changes", "field_name", "fragment"),
    [
        ({"width": 100}, "width", "256–1536 in multiples of 16"),
        ({"height": 1600}, "height", "256–1536"),
        ({"width": 1000}, "width", "multiples of 16"),
        ({"steps": 0}, "steps", "1–50"),
        ({"steps": 12.5}, "steps", "whole number"),
        ({"guidance": 20.5}, "guidance", "0–20"),
        ({"guidance": math.nan}, "guidance", "0–20"),
        ({"num_images": 5}, "number of images", "1–4"),
        ({"identity_strength": -0.1}, "identity strength", "0–2"),
        ({"seed": -1}, "seed", "0–2147483647"),
        ({"seed": 2**31}, "seed", "0–2147483647"),
        ({"guidance": "3.5"}, "guidance", "expected a number"),
        ({"num_images": True}, "number of images", "expected a number"),
    ],
)
def test_out_of_range_values_name_field_value_and_allowed_range(changes, field_name, fragment):
    with pytest.raises(RequestValidationError) as caught:
        LIMITS.validate(request(**changes))
    error = caught.value
    assert error.field_name == field_name
    message = str(error)
    assert message.startswith("Test Backend: ")
    assert field_name in message and fragment in message
    assert str(list(changes.values())[0]).strip("'") in message


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_an_empty_prompt_is_refused(prompt):
    with pytest.raises(RequestValidationError, match="prompt must not be empty"):
        LIMITS.validate(request(prompt=prompt))


def test_an_overlong_prompt_is_refused():
    with pytest.raises(RequestValidationError, match="at most 10000 characters"):
        LIMITS.validate(request(prompt="x" * 10_001))


def test_a_missing_reference_is_refused():
    with pytest.raises(RequestValidationError, match="connect a reference image"):
        LIMITS.validate(request(reference=None))


def test_a_tiny_reference_is_refused():
    with pytest.raises(RequestValidationError, match=r"reference image size = '8x40' .*at least 16 pixels"):
        LIMITS.validate(request(reference=Image.new("RGB", (8, 40))))


def test_extras_are_checked_against_the_backend_declaration():
    with pytest.raises(RequestValidationError, match="unknown option; this backend takes: adapter_strength, "):
        LIMITS.validate(request(extras={"adaptor_strength": 0.5}))
    with pytest.raises(RequestValidationError, match=r"output_format = 'webp'.*'jpeg', 'png'"):
        LIMITS.validate(request(extras={"output_format": "webp"}))
    with pytest.raises(RequestValidationError, match="enable_safety_checker = 1 .*true or false"):
        LIMITS.validate(request(extras={"enable_safety_checker": 1}))
    with pytest.raises(RequestValidationError, match="adapter_strength = 1.5 .*0–1"):
        LIMITS.validate(request(extras={"adapter_strength": 1.5}))
    with pytest.raises(RequestValidationError, match="pose_image = 'str'"):
        LIMITS.validate(request(extras={"pose_image": "pose.png"}))


def test_open_ended_choices_take_any_non_empty_name_and_none_means_unset():
    LIMITS.validate(request(extras={"style": "Film Noir", "pose_image": None}))
    with pytest.raises(RequestValidationError, match="any other non-empty name"):
        LIMITS.validate(request(extras={"style": "  "}))


class RecordingBackend(GenerationBackend):
    """Counts how often the expensive part would have run."""

    def __init__(self):
        self.runs = 0

    @property
    def limits(self):
        return LIMITS

    async def _run(self, request, context):
        self.runs += 1
        context.report_status("working")
        return GenerationResult(images=[request.reference.copy()], backend="test", seed=request.seed)


def test_generate_validates_before_any_work_starts():
    backend = RecordingBackend()
    with pytest.raises(RequestValidationError):
        asyncio.run(backend.generate(request(steps=99), DetachedRunContext()))
    assert backend.runs == 0
    context = DetachedRunContext()
    result = asyncio.run(backend.generate(request(seed=7), context))
    assert backend.runs == 1 and result.seed == 7 and context.statuses == ["working"]


def test_result_info_is_json_and_carries_the_run_metadata():
    result = GenerationResult(
        images=[Image.new("RGB", (32, 16)), Image.new("RGB", (32, 16))], backend="fal", seed=42,
        job_id="req-1", timings={"queue": 0.12345, "inference": 2.5}, safety_flags=[False, True],
        cost_usd=0.05, details={"provider_logs": ["step 1"]},
    )
    info = json.loads(json.dumps(result.info()))
    assert info == {
        "backend": "fal", "job_id": "req-1", "seed": 42, "images": [[32, 16], [32, 16]],
        "timings": {"queue": 0.123, "inference": 2.5}, "safety_flags": [False, True], "cost_usd": 0.05,
        "provider_logs": ["step 1"],
    }
