"""WaveSpeed InstantCharacter backend against its emulator: protocol, faults, Cancel."""
from __future__ import annotations

import time

import pytest

from cloud_helpers import (TEST_KEYS, CancelAt, assert_emulator_image, reference, request, run, wavespeed)
from pipelines import GenerationInterrupted, RequestValidationError
from pipelines.cloud import MissingKeyError, ProviderError, Timeouts, UploadCache

KEY = TEST_KEYS["WAVESPEED_API_KEY"]


def test_v3_round_trip_sends_every_documented_field_and_returns_the_images(wavespeed_emulator):
    req = request(width=640, height=512, seed=77, num_images=2, negative_prompt="blurry", guidance=4.5, steps=12,
                  extras={"enable_safety_checker": False})
    result = run(wavespeed(wavespeed_emulator), req)
    [sent] = wavespeed_emulator.submissions
    assert sent == {"prompt": req.prompt, "image": sent["image"], "size": "640*512", "seed": 77,
                    "negative_prompt": "blurry", "guidance_scale": 4.5, "num_inference_steps": 12, "num_images": 2,
                    "enable_safety_checker": False}
    assert sent["image"].startswith(wavespeed_emulator.url + "/files/")
    assert [image.size for image in result.images] == [(640, 512), (640, 512)]
    for index, image in enumerate(result.images):
        assert_emulator_image(image, req.prompt, 77, index)
    info = result.info()
    assert info["backend"] == "WaveSpeed InstantCharacter (v3)" and info["job_id"].startswith("ws")
    assert info["seed"] == 77 and info["safety_flags"] == [False, False]
    assert info["api_version"] == "v3" and info["ignored_inputs"] == ["strength"]
    assert {"upload", "submit", "wait", "inference", "download", "total"} <= set(info["timings"])


def test_v2_uses_the_v2_paths_and_limits(wavespeed_emulator):
    result = run(wavespeed(wavespeed_emulator, "v2"), request(width=512, height=768, seed=9_000_000_000))
    assert result.images[0].size == (512, 768) and result.info()["api_version"] == "v2"
    assert wavespeed_emulator.counts["submit"] == 1
    with pytest.raises(RequestValidationError, match=r"\(v2\): width = 256 .*512–1536"):
        run(wavespeed(wavespeed_emulator, "v2"), request(width=256))
    with pytest.raises(RequestValidationError, match=r"\(v3\): seed = 9000000000 .*-1–2147483647"):
        run(wavespeed(wavespeed_emulator, "v3"), request(seed=9_000_000_000))
    assert wavespeed_emulator.counts["submit_attempt"] == 1 and wavespeed_emulator.counts["upload_attempt"] == 1


def test_the_same_reference_is_uploaded_once_across_new_seeds_and_prompts(wavespeed_emulator, tmp_path):
    cache = UploadCache(tmp_path / "uploads.json")
    for seed in range(4):
        run(wavespeed(wavespeed_emulator, uploads=cache), request(seed=seed, prompt=f"pose {seed}"))
    assert wavespeed_emulator.counts["upload"] == 1 and wavespeed_emulator.counts["submit"] == 4
    # a fresh cache object reading the same file (e.g. after a ComfyUI restart) still knows the upload
    run(wavespeed(wavespeed_emulator, uploads=UploadCache(tmp_path / "uploads.json")), request(seed=99))
    assert wavespeed_emulator.counts["upload"] == 1
    run(wavespeed(wavespeed_emulator, uploads=cache), request(reference=reference(rgb=(10, 200, 10))))
    assert wavespeed_emulator.counts["upload"] == 2


def test_a_missing_key_is_reported_before_anything_is_uploaded(wavespeed_emulator, tmp_path):
    backend = wavespeed(wavespeed_emulator, keys={"CHARACTER_IDENTITY_KEYS": str(tmp_path / "none.ini")})
    with pytest.raises(MissingKeyError) as caught:
        run(backend, request())
    assert "WAVESPEED_API_KEY" in str(caught.value) and str(tmp_path / "none.ini") in str(caught.value)
    assert wavespeed_emulator.counts["upload_attempt"] == 0


def test_a_wrong_key_is_a_clear_401_without_the_key_in_the_text(wavespeed_emulator):
    backend = wavespeed(wavespeed_emulator, keys={"WAVESPEED_API_KEY": "ws-wrong-key-000"})
    with pytest.raises(ProviderError) as caught:
        run(backend, request())
    text = str(caught.value)
    assert "WaveSpeed InstantCharacter (v3)" in text and "HTTP 401" in text and "invalid API key" in text
    assert "WAVESPEED_API_KEY" in text and "ws-wrong-key-000" not in text
    assert wavespeed_emulator.counts["submit_attempt"] == 0


def test_rate_limited_submit_is_retried_after_retry_after_and_billed_once(wavespeed_emulator):
    wavespeed_emulator.faults.add("submit", "status", status=429, headers={"Retry-After": "1"},
                                  body={"code": 429, "message": "Too Many Requests"})
    context = CancelAt()
    started = time.monotonic()
    result = run(wavespeed(wavespeed_emulator), request(), context)
    assert time.monotonic() - started >= 1.0
    assert wavespeed_emulator.counts["submit_attempt"] == 2 and wavespeed_emulator.counts["submit"] == 1
    assert any("retrying in 1.0 s" in text for text in context.statuses)
    assert result.images


@pytest.mark.parametrize("kind", ["reset", "hang", "malformed"])
def test_an_ambiguous_submit_failure_is_never_re_sent(wavespeed_emulator, kind):
    wavespeed_emulator.faults.add("submit", kind)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        run(wavespeed(wavespeed_emulator), request())
    assert time.monotonic() - started < 10
    assert wavespeed_emulator.counts["submit_attempt"] == 1
    assert "not re-sent" in str(caught.value) or "was not re-sent" in str(caught.value)


def test_server_errors_and_garbage_while_polling_are_retried(wavespeed_emulator):
    wavespeed_emulator.faults.add("poll", "status", status=503, times=2)
    wavespeed_emulator.faults.add("poll", "malformed")
    wavespeed_emulator.faults.add("poll", "reset")
    result = run(wavespeed(wavespeed_emulator), request())
    assert result.images and wavespeed_emulator.counts["submit"] == 1


def test_a_failed_job_names_the_provider_message_and_the_job(wavespeed_emulator):
    wavespeed_emulator.faults.add("job", "failed")
    with pytest.raises(ProviderError) as caught:
        run(wavespeed(wavespeed_emulator), request())
    text = str(caught.value)
    assert "the job failed" in text and "CUDA OOM" in text and "[job ws" in text


def test_nsfw_flags_are_surfaced(wavespeed_emulator):
    wavespeed_emulator.faults.add("job", "nsfw")
    result = run(wavespeed(wavespeed_emulator), request(num_images=2))
    assert result.safety_flags == [True, True]


@pytest.mark.parametrize("kind", ["truncate", "short_image", "status"])
def test_broken_downloads_are_retried(wavespeed_emulator, kind):
    wavespeed_emulator.faults.add("download", kind, status=502)
    result = run(wavespeed(wavespeed_emulator), request())
    assert_emulator_image(result.images[0], request().prompt, 1234, 0)
    assert wavespeed_emulator.counts["download"] == 2


def test_a_download_that_keeps_failing_is_a_clear_error(wavespeed_emulator):
    wavespeed_emulator.faults.add("download", "short_image", times=10)
    with pytest.raises(ProviderError, match=r"downloading image 1: not a valid image .*\[job ws"):
        run(wavespeed(wavespeed_emulator), request())


@pytest.mark.parametrize("phase", ["upload", "submit", "poll", "download"])
def test_cancel_is_honoured_within_a_second_and_a_half_in_every_phase(wavespeed_emulator, phase):
    wavespeed_emulator.processing_s = 5.0 if phase == "poll" else 0.2
    wavespeed_emulator.faults.add(phase, "hang")
    context = CancelAt(after_s=0.8 if phase != "download" else 1.2)
    backend = wavespeed(wavespeed_emulator, timeouts=Timeouts(request=30, transfer=30))   # only Cancel ends it
    with pytest.raises(GenerationInterrupted):
        run(backend, request(), context)
    assert time.monotonic() - context.fired_at <= 1.5
