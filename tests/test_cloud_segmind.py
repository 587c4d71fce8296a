"""Segmind InstantID backend against its emulator: v1 (blocking) and v2 (queued)."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from cloud_helpers import assert_emulator_image, reference, request, run, segmind
from pipelines import RequestValidationError
from pipelines.cloud import ProviderError


def from_data_uri(uri: str) -> Image.Image:
    """The face and pose images travel as data: URIs (Segmind documents them as URIs)."""
    header, _, payload = uri.partition(",")
    assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header
    return Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))


def segmind_request(**changes):
    return request(**{"steps": 10, "guidance": 5.0, "identity_strength": 0.8, "width": 512, "height": 768, **changes})


def test_v1_sends_every_documented_field_inline_and_fits_the_image_to_the_requested_size(segmind_emulator):
    pose = Image.new("RGB", (200, 100), (0, 0, 255))
    req = segmind_request(seed=42, negative_prompt="lowquality",
                          extras={"style": "Watercolor", "adapter_strength": 0.6, "enhance_face_region": False,
                                  "pose_image": pose})
    result = run(segmind(segmind_emulator), req)
    [sent] = segmind_emulator.submissions
    face = from_data_uri(sent["face_image"])
    assert face.size == (96, 128) and face.getpixel((0, 0)) == (200, 40, 60)
    assert from_data_uri(sent["pose_image"]).size == (200, 100)
    assert {k: v for k, v in sent.items() if k not in ("face_image", "pose_image")} == {
        "prompt": req.prompt, "negative_prompt": "lowquality", "style": "Watercolor", "samples": 1,
        "num_inference_steps": 10, "guidance_scale": 5.0, "seed": 42, "identity_strength": 0.8,
        "adapter_strength": 0.6, "enhance_face_region": False, "base64": False}
    [image] = result.images
    assert image.size == (512, 768)
    assert_emulator_image(image, req.prompt, 42, 0, tolerance=5)
    info = result.info()
    assert info["provider_sizes"] == [[1280, 640]]       # the pose image decides InstantID's size
    assert info["remaining_credits"] == pytest.approx(segmind_emulator.credits)
    assert info["cost_usd"] == 0.025 and info["seed"] == 42 and info["job_id"].startswith("sg")


def test_v1_with_several_samples_asks_for_base64_and_gets_them_all(segmind_emulator):
    result = run(segmind(segmind_emulator), segmind_request(num_images=3, seed=7))
    assert segmind_emulator.submissions[0]["base64"] is True
    assert len(result.images) == 3
    for index, image in enumerate(result.images):
        assert_emulator_image(image, segmind_request().prompt, 7, index, tolerance=5)


def test_v1_base64_json_is_handled_even_when_raw_bytes_were_asked_for(segmind_emulator):
    segmind_emulator.faults.add("submit", "json_body")
    result = run(segmind(segmind_emulator), segmind_request(seed=3))
    assert_emulator_image(result.images[0], segmind_request().prompt, 3, 0, tolerance=5)


def test_v2_queued_round_trip_reports_metrics(segmind_emulator):
    segmind_emulator.queue_s = 0.3
    result = run(segmind(segmind_emulator, "v2"), segmind_request(num_images=2, seed=11))
    assert len(result.images) == 2 and all(image.size == (512, 768) for image in result.images)
    info = result.info()
    assert info["job_id"].startswith("sgq") and info["api_version"] == "v2"
    assert info["cost_usd"] == 0.05 and info["remaining_credits"] == pytest.approx(segmind_emulator.credits)
    assert info["timings"]["inference"] == pytest.approx(segmind_emulator.processing_s)
    assert segmind_emulator.counts["download"] == 2


def test_v2_failed_jobs_answer_422_and_are_reported_with_the_job(segmind_emulator):
    segmind_emulator.faults.add("job", "failed")
    with pytest.raises(ProviderError) as caught:
        run(segmind(segmind_emulator, "v2"), segmind_request())
    text = str(caught.value)
    assert "the job failed: Inference failed: face not detected" in text and "[job sgq" in text


def test_any_style_name_can_be_typed_and_the_provider_judges_it(segmind_emulator):
    segmind_emulator.extra_styles.add("Cinematic")
    run(segmind(segmind_emulator), segmind_request(extras={"style": "Cinematic"}))
    with pytest.raises(ProviderError, match=r"HTTP 400\): style 'Made Up' is not one of the 29 allowed values"):
        run(segmind(segmind_emulator), segmind_request(extras={"style": "Made Up"}))


def test_out_of_credits_and_html_errors_read_clearly(segmind_emulator):
    segmind_emulator.faults.add("submit", "status", status=406, body={"error": "Not enough credits"})
    with pytest.raises(ProviderError, match=r"\(HTTP 406\): Not enough credits.*out of credits"):
        run(segmind(segmind_emulator), segmind_request())
    segmind_emulator.faults.add("submit", "html", status=405)
    with pytest.raises(ProviderError, match=r"\(HTTP 405\): the provider answered with an HTML page"):
        run(segmind(segmind_emulator), segmind_request())
    assert segmind_emulator.counts["submit"] == 0


def test_a_failed_blocking_call_is_not_re_sent(segmind_emulator):
    segmind_emulator.faults.add("job", "failed")
    with pytest.raises(ProviderError, match=r"generating \(HTTP 500\): Inference failed"):
        run(segmind(segmind_emulator), segmind_request())
    assert segmind_emulator.counts["submit_attempt"] == 1


def test_segmind_ranges_are_checked_before_anything_is_sent(segmind_emulator):
    for changes, fragment in [({"steps": 2}, "steps = 2"), ({"guidance": 30}, "guidance = 30"),
                              ({"identity_strength": 1.2}, "identity strength = 1.2"),
                              ({"extras": {"adapter_strength": 2}}, "adapter_strength = 2")]:
        with pytest.raises(RequestValidationError, match=fragment):
            run(segmind(segmind_emulator), segmind_request(**changes))
    assert segmind_emulator.counts["submit_attempt"] == 0


def test_a_large_reference_is_downscaled_before_it_is_inlined(segmind_emulator):
    run(segmind(segmind_emulator), segmind_request(reference=reference(size=(3000, 2000))))
    face = from_data_uri(segmind_emulator.submissions[0]["face_image"])
    assert face.size == (1536, 1024)
