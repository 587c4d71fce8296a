"""fal InstantCharacter backend against its emulator: queue protocol, CDN upload, Cancel."""
from __future__ import annotations

import json
import time

import pytest

from cloud_helpers import TEST_KEYS, CancelAt, assert_emulator_image, fal, request, run
from pipelines import GenerationInterrupted, RequestValidationError
from pipelines.cloud import ProviderError, UploadCache

KEY_ID, KEY_SECRET = TEST_KEYS["FAL_KEY"].split(":")


def test_round_trip_uploads_to_the_cdn_and_sends_every_documented_field(fal_emulator):
    req = request(width=768, height=512, seed=5, num_images=2, identity_strength=1.4, negative_prompt="text",
                  extras={"output_format": "png", "enable_safety_checker": False})
    context = CancelAt()
    result = run(fal(fal_emulator), req, context)
    [sent] = fal_emulator.submissions
    assert sent == {"prompt": req.prompt, "image_url": sent["image_url"], "image_size": {"width": 768, "height": 512},
                    "scale": 1.4, "negative_prompt": "text", "guidance_scale": 3.5, "num_inference_steps": 20,
                    "num_images": 2, "enable_safety_checker": False, "output_format": "png", "sync_mode": False,
                    "seed": 5}
    assert sent["image_url"].startswith(fal_emulator.url + "/files/")
    [upload_headers] = fal_emulator.upload_headers
    lifecycle = json.loads(upload_headers["X-Fal-Object-Lifecycle-Preference"])
    assert lifecycle == {"expiration_duration_seconds": 86400}
    for index, image in enumerate(result.images):
        assert image.size == (768, 512)
        assert_emulator_image(image, req.prompt, 5, index)
    info = result.info()
    assert info["seed"] == 5 and info["job_id"].endswith("-fal") and info["safety_flags"] == [False, False]
    assert info["cost_usd"] == round(768 * 512 / 1e6 * 0.1 * 2, 4)
    assert info["provider_logs"] == ["Loading InstantCharacter", "Generated images"]
    assert any("running" in text for text in context.statuses)


def test_a_preset_image_size_is_sent_by_name_and_sets_the_output_size(fal_emulator):
    req = request(width=512, height=512, extras={"image_size": "landscape_4_3"})
    result = run(fal(fal_emulator), req)
    assert fal_emulator.submissions[0]["image_size"] == "landscape_4_3"
    assert result.images[0].size == (1024, 768)
    assert_emulator_image(result.images[0], req.prompt, 1234, 0, tolerance=4)   # JPEG by default


def test_seed_minus_one_lets_fal_pick_and_reports_the_seed_it_used(fal_emulator):
    result = run(fal(fal_emulator), request(seed=-1))
    assert "seed" not in fal_emulator.submissions[0]
    assert isinstance(result.seed, int) and result.seed == fal_emulator.jobs[result.job_id]["seed"]


def test_the_upload_is_reused_for_new_seeds(fal_emulator):
    cache = UploadCache()
    for seed in range(3):
        run(fal(fal_emulator, uploads=cache), request(seed=seed))
    assert fal_emulator.counts["upload"] == 1 and fal_emulator.counts["submit"] == 3


def test_when_the_cdn_upload_fails_the_reference_goes_inline(fal_emulator):
    fal_emulator.faults.add("upload", "status", status=500, times=5)
    result = run(fal(fal_emulator), request())
    assert fal_emulator.submissions[0]["image_url"].startswith("data:image/png;base64,")
    assert result.info()["reference_upload"] == "inline (CDN upload failed)"
    assert_emulator_image(result.images[0], request().prompt, 1234, 0, tolerance=4)


def test_sync_mode_results_arrive_as_data_uris(fal_emulator):
    result = run(fal(fal_emulator), request(extras={"sync_mode": True, "output_format": "png"}))
    assert fal_emulator.counts["download"] == 0
    assert_emulator_image(result.images[0], request().prompt, 1234, 0)


def test_provider_validation_errors_are_flattened_into_one_readable_line(fal_emulator):
    fal_emulator.faults.add("submit", "status", status=422, body={"detail": [
        {"loc": ["body", "image_size", "width"], "msg": "ensure this value is less than 1536", "type": "value_error"},
        {"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]})
    with pytest.raises(ProviderError) as caught:
        run(fal(fal_emulator), request())
    text = str(caught.value)
    assert "HTTP 422" in text and "image_size.width: ensure this value is less than 1536; prompt: field required" in text
    assert fal_emulator.counts["submit_attempt"] == 1


def test_a_completed_status_carrying_an_error_is_a_failure(fal_emulator):
    fal_emulator.faults.add("job", "completed_error")
    with pytest.raises(ProviderError, match=r"the job failed: Out of memory on runner \(runner_disconnected\)"):
        run(fal(fal_emulator), request())
    assert fal_emulator.counts["result"] == 0


def test_a_result_that_fails_server_side_is_retried_then_reported(fal_emulator):
    fal_emulator.faults.add("job", "failed")
    with pytest.raises(ProviderError, match=r"fetching the result \(HTTP 500\): Internal server error"):
        run(fal(fal_emulator), request())


def test_nsfw_concepts_are_surfaced(fal_emulator):
    fal_emulator.faults.add("job", "nsfw")
    assert run(fal(fal_emulator), request()).safety_flags == [True]


def test_cancel_sends_the_provider_cancel_and_stops_within_a_second_and_a_half(fal_emulator):
    fal_emulator.processing_s = 10.0
    context = CancelAt(on_status="running")
    with pytest.raises(GenerationInterrupted):
        run(fal(fal_emulator), request(), context)
    assert time.monotonic() - context.fired_at <= 1.5
    assert fal_emulator.cancelled == list(fal_emulator.jobs)


def test_cancel_during_submit_still_cancels_the_job_it_created(fal_emulator):
    fal_emulator.latency_s = 0.6           # the submit is in flight when Cancel comes
    fal_emulator.processing_s = 5.0
    context = CancelAt(on_status="submitting", after_s=0.2)
    with pytest.raises(GenerationInterrupted):
        run(fal(fal_emulator), request(), context)
    assert time.monotonic() - context.fired_at <= 1.5 + fal_emulator.latency_s
    assert fal_emulator.counts["submit"] == 1 and fal_emulator.cancelled == list(fal_emulator.jobs)


def test_key_id_and_secret_never_appear_in_errors_even_when_the_provider_echoes_them(fal_emulator):
    fal_emulator.faults.add("submit", "status", status=403,
                            body={"detail": f"key {KEY_ID}:{KEY_SECRET} is not allowed to call this app"})
    with pytest.raises(ProviderError) as caught:
        run(fal(fal_emulator), request())
    text = str(caught.value)
    assert KEY_ID not in text and KEY_SECRET not in text and "key *** is not allowed" in text


def test_custom_sizes_outside_the_packs_bounds_are_refused_before_upload(fal_emulator):
    with pytest.raises(RequestValidationError, match="width = 4096"):
        run(fal(fal_emulator), request(width=4096))
    with pytest.raises(RequestValidationError, match="image_size = 'huge'"):
        run(fal(fal_emulator), request(extras={"image_size": "huge"}))
    assert fal_emulator.counts["token"] == 0
