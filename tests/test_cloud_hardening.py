"""The defects found by trying the cloud backends as real users and real providers behave (issue 6),
each against the emulators: odd 2xx codes, lost answers, malformed headers, keys echoed in
envelopes, timeouts, a cache that cannot be written, providers that forgot an upload, oversized
answers and foreign hosts."""
from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import time

import numpy as np
import pytest
from PIL import Image

from cloud_helpers import (FAST, TEST_KEYS, CancelAt, assert_emulator_image, fal, reference, request, run, segmind,
                           wavespeed)
from pipelines.cloud import ProviderError, UploadCache
from pipelines.cloud.transport import Redactor, _retry_after
from pipelines.cloud.uploads import content_key


def segmind_request(**changes):
    return request(**{"steps": 10, "guidance": 5.0, "identity_strength": 0.8, **changes})


# ---- 2: every 2xx is a success --------------------------------------------------------------

def test_fal_status_answers_202_while_the_job_runs_and_the_node_keeps_polling(fal_emulator):
    fal_emulator.stream_enabled = False                # the polling path (the stream is tested below)
    fal_emulator.processing_s, fal_emulator.queue_s = 0.8, 0.4
    result = run(fal(fal_emulator), request(seed=3))
    assert_emulator_image(result.images[0], request().prompt, 3, 0)
    assert fal_emulator.counts["poll"] >= 3          # several 202 answers were polled through


@pytest.mark.parametrize(("make", "emulator_name", "phase", "status"), [
    ("wavespeed", "wavespeed", "submit", 201), ("wavespeed", "wavespeed", "poll", 202),
    ("wavespeed", "wavespeed", "ticket", 201), ("wavespeed", "wavespeed", "upload", 201),
    ("fal", "fal", "submit", 202), ("fal", "fal", "result", 203), ("fal", "fal", "upload", 201),
    ("segmind_v2", "segmind", "submit", 202), ("segmind_v2", "segmind", "result", 203),
    ("segmind_v1", "segmind", "submit", 201),
])
def test_any_2xx_answer_is_a_success(emulator_servers, make, emulator_name, phase, status):
    emulator = emulator_servers[emulator_name]
    emulator.reset()
    emulator.faults.add(phase, "recode", status=status)
    backend = {"wavespeed": lambda: wavespeed(emulator), "fal": lambda: fal(emulator),
               "segmind_v1": lambda: segmind(emulator, "v1"), "segmind_v2": lambda: segmind(emulator, "v2")}[make]()
    req = segmind_request(seed=5) if make.startswith("segmind") else request(seed=5)
    result = run(backend, req)
    assert_emulator_image(result.images[0], req.prompt, 5, 0, tolerance=5)
    assert emulator.counts[f"fault:{phase}:recode"] == 1 and emulator.counts["submit"] == 1
    if phase == "upload" and make == "fal":
        assert result.details["reference_upload"] == "uploaded"   # not the inline fallback


# ---- 3: a malformed Retry-After is no hint --------------------------------------------------

@pytest.mark.parametrize("value", ["soon", "Mon, 99 Foo 2026", "-5", "nan", "inf", "1e999", "", "Tue, 01 Jan 1980"])
def test_retry_after_never_raises(value):
    seconds = _retry_after({"Retry-After": value})
    assert seconds is None or (seconds >= 0 and np.isfinite(seconds))


def test_retry_after_reads_seconds_and_http_dates():
    assert _retry_after({"Retry-After": "3"}) == 3.0
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= _retry_after({"Retry-After": future}) <= 31


def test_a_malformed_retry_after_does_not_crash_a_paid_run(fal_emulator, wavespeed_emulator):
    fal_emulator.stream_enabled = False
    fal_emulator.faults.add("poll", "status", status=503, headers={"Retry-After": "Mon, 99 Foo 2026"})
    fal_emulator.faults.add("poll", "status", status=429, headers={"Retry-After": "soon"})
    result = run(fal(fal_emulator), request(seed=8))
    assert result.images and fal_emulator.counts["submit"] == 1
    wavespeed_emulator.faults.add("submit", "status", status=429, headers={"Retry-After": "later please"})
    assert run(wavespeed(wavespeed_emulator), request(seed=8)).images
    assert wavespeed_emulator.counts["submit"] == 1


# ---- 4: keys are redacted in one place; envelope codes are the provider's ---------------------

def test_a_200_envelope_with_an_error_code_is_the_providers_code_and_never_shows_the_key(wavespeed_emulator):
    key = TEST_KEYS["WAVESPEED_API_KEY"]
    wavespeed_emulator.faults.add("submit", "status", status=200,
                                  body={"code": 401, "message": f"invalid key {key}", "data": None})
    with pytest.raises(ProviderError) as caught:
        run(wavespeed(wavespeed_emulator), request())
    text = str(caught.value)
    assert key not in text and "invalid key ***" in text
    assert "(provider code 401)" in text and "HTTP 401" not in text
    assert caught.value.status is None and caught.value.provider_code == 401
    assert "Check the key in WAVESPEED_API_KEY" in text


@pytest.mark.parametrize("provider", ["wavespeed", "fal", "segmind"])
def test_failed_job_texts_that_carry_the_key_are_redacted(emulator_servers, provider):
    emulator = emulator_servers[provider]
    emulator.reset()
    key = TEST_KEYS[{"wavespeed": "WAVESPEED_API_KEY", "fal": "FAL_KEY", "segmind": "SEGMIND_API_KEY"}[provider]]
    kind = "completed_error" if provider == "fal" else "failed"
    emulator.faults.add("job", kind, body=f"worker used credentials {key} and crashed")
    backend = {"wavespeed": lambda: wavespeed(emulator), "fal": lambda: fal(emulator),
               "segmind": lambda: segmind(emulator, "v2")}[provider]()
    with pytest.raises(ProviderError) as caught:
        run(backend, segmind_request() if provider == "segmind" else request())
    assert "worker used credentials *** and crashed" in str(caught.value)
    for piece in [key, *key.split(":")]:
        assert piece not in str(caught.value)


def test_status_texts_and_provider_logs_are_redacted(fal_emulator, monkeypatch):
    key = TEST_KEYS["FAL_KEY"]
    context = CancelAt()
    backend = fal(fal_emulator)
    original = type(backend).check

    async def leaky_check(self, http, job):
        status = await original(self, http, job)
        job.logs.append(f"runner authenticated with {key}")
        status.note = job.logs[-1]
        return status

    monkeypatch.setattr(type(backend), "check", leaky_check)
    fal_emulator.stream_enabled = False
    fal_emulator.processing_s = 0.6
    result = run(backend, request(), context)
    seen = json.dumps(context.statuses) + json.dumps(result.info())
    assert "runner authenticated with ***" in seen
    assert all(piece not in seen for piece in [key, *key.split(":")])


def test_the_redactor_hides_whole_keys_and_their_halves():
    redact = Redactor(["abcdef:0123456789"])
    assert redact("k=abcdef:0123456789 id=abcdef s=0123456789") == "k=*** id=*** s=***"


# ---- 5: a fal job is cancelled on every failed exit; queue and job budgets ---------------------

def test_a_job_timeout_cancels_the_fal_job_and_queue_time_has_its_own_budget(fal_emulator):
    fal_emulator.queue_s, fal_emulator.processing_s = 1.5, 30.0
    timeouts = dataclasses.replace(FAST, job=1.0, queue=10.0)
    context = CancelAt()
    with pytest.raises(ProviderError) as caught:
        run(fal(fal_emulator, timeouts=timeouts), request(), context)
    text = str(caught.value)
    # 1.5 s in the queue did not use the 1 s job budget: the job failed only after running 1 s
    assert "still running after 1 s" in text and "CHARACTER_IDENTITY_JOB_TIMEOUT" in text
    assert fal_emulator.cancelled == list(fal_emulator.jobs)
    assert any("in queue" in s and "of 10 s" in s for s in context.statuses)
    assert any("running" in s and "of 1 s" in s for s in context.statuses)


def test_a_long_queue_fails_on_the_queue_budget_and_cancels(fal_emulator):
    fal_emulator.queue_s = 30.0
    timeouts = dataclasses.replace(FAST, job=60.0, queue=1.0)
    with pytest.raises(ProviderError) as caught:
        run(fal(fal_emulator, timeouts=timeouts), request())
    assert "still in queue after 1 s" in str(caught.value) and "CHARACTER_IDENTITY_QUEUE_TIMEOUT" in str(caught.value)
    assert fal_emulator.cancelled == list(fal_emulator.jobs)


@pytest.mark.parametrize(("phase", "status"), [("poll", 404), ("stream", 403)])
def test_an_error_while_waiting_cancels_the_fal_job(fal_emulator, phase, status):
    fal_emulator.processing_s = 30.0
    fal_emulator.stream_enabled = phase == "stream"
    fal_emulator.faults.add(phase, "status", status=status, body={"detail": "Request not found"})
    with pytest.raises(ProviderError, match=f"HTTP {status}"):
        run(fal(fal_emulator), request())
    assert fal_emulator.cancelled == list(fal_emulator.jobs) and len(fal_emulator.jobs) == 1


# ---- 6: the upload cache is best-effort and forgets dead uploads ------------------------------

def test_an_unwritable_cache_never_fails_a_run_and_leaves_no_temp_file(wavespeed_emulator, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = UploadCache(blocker / "uploads.json")
    result = run(wavespeed(wavespeed_emulator, uploads=cache), request(seed=1))
    assert result.images and "could not write the upload cache" in caplog.text


def test_a_full_disk_while_writing_the_cache_is_logged_and_cleaned_up(tmp_path, monkeypatch, caplog):
    path = tmp_path / "cache" / "uploads.json"
    cache = UploadCache(path)
    cache.put("a", "https://x/a", 60)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", disk_full)
    cache.put("b", "https://x/b", 60)            # must not raise
    assert "No space left on device" in caplog.text
    assert os.listdir(path.parent) == ["uploads.json"]          # no temp file left behind
    monkeypatch.undo()
    assert cache.get("a") == "https://x/a" and cache.get("b") is None


@pytest.mark.parametrize("provider", ["wavespeed", "fal"])
def test_a_cached_upload_the_provider_lost_is_evicted_and_uploaded_again_once(emulator_servers, provider, tmp_path):
    emulator = emulator_servers[provider]
    emulator.reset()
    cache = UploadCache(tmp_path / "uploads.json")
    make = {"wavespeed": wavespeed, "fal": fal}[provider]
    run(make(emulator, uploads=cache), request(seed=1))
    assert emulator.counts["upload"] == 1
    emulator.expire_files()                         # the provider deleted the upload before the cache expired
    result = run(make(emulator, uploads=cache), request(seed=2))
    assert_emulator_image(result.images[0], request().prompt, 2, 0)
    assert emulator.counts["upload"] == 2 and emulator.counts["submit"] == 2
    assert len(emulator.rejections) == 1            # the one submit that named the lost URL
    assert result.details["reference_upload"] == "uploaded"
    # and the new URL is what the cache holds now
    assert run(make(emulator, uploads=cache), request(seed=3)).details["reference_upload"] == "cached"


def _hammer_cache(path: str, worker: int, rounds: int) -> None:
    cache = UploadCache(path)
    for index in range(rounds):
        cache.put(f"w{worker}-{index}", f"https://cdn/{worker}/{index}", 600)
        assert cache.get(f"w{worker}-{index}") in (None, f"https://cdn/{worker}/{index}")


def test_two_processes_sharing_the_cache_never_corrupt_it(tmp_path):
    path = str(tmp_path / "uploads.json")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer_cache, args=(path, worker, 60)) for worker in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    entries = json.loads(open(path).read())          # always a whole, valid file
    assert entries and all(value["url"].startswith("https://cdn/") for value in entries.values())
    assert sorted(os.listdir(tmp_path)) == ["uploads.json"]


# ---- 7: Segmind v2 reads 422 as its SDK does ----------------------------------------------------

def test_segmind_422_with_failed_is_the_failed_job_with_the_providers_message(segmind_emulator):
    segmind_emulator.faults.add("job", "failed", body="face not detected in face_image")
    with pytest.raises(ProviderError, match="the job failed: face not detected in face_image"):
        run(segmind(segmind_emulator, "v2"), segmind_request())


def test_segmind_422_without_failed_is_a_clear_error_at_once(segmind_emulator):
    segmind_emulator.processing_s = 30.0
    segmind_emulator.faults.add("poll", "status", status=422, body={"error": "request id expired"})
    started = time.monotonic()
    with pytest.raises(ProviderError, match=r"checking the job \(HTTP 422\): request id expired"):
        run(segmind(segmind_emulator, "v2"), segmind_request())
    assert time.monotonic() - started < 5 and segmind_emulator.counts["poll"] == 1


def test_an_unknown_status_value_is_a_clear_error_at_once(segmind_emulator, wavespeed_emulator, fal_emulator):
    for emulator, backend, req, body in [
        (segmind_emulator, segmind(segmind_emulator, "v2"), segmind_request(), {"status": "PAUSED"}),
        (fal_emulator, fal(fal_emulator), request(), {"status": "SLEEPING"}),
        (wavespeed_emulator, wavespeed(wavespeed_emulator), request(),
         {"code": 200, "message": "success", "data": {"id": "x", "status": "pondering"}}),
    ]:
        emulator.processing_s = 30.0
        if emulator is fal_emulator:
            emulator.stream_enabled = False
        emulator.faults.add("poll", "status", status=200, body=body)
        with pytest.raises(ProviderError, match="unknown job status"):
            run(backend, req)
        assert emulator.counts["poll"] == 1


# ---- 8: capped answers; the key goes to configured hosts only -----------------------------------

def test_an_oversized_answer_is_refused_not_read_into_memory(wavespeed_emulator):
    wavespeed_emulator.faults.add("poll", "status", status=200, body={"padding": "x" * (9 * 1024 * 1024)})
    with pytest.raises(ProviderError, match="larger than 8388608 bytes"):
        run(wavespeed(wavespeed_emulator), request())


def test_status_urls_on_another_host_never_receive_the_key(fal_emulator):
    fal_emulator.answer_host = "localhost"            # same server, another host name
    fal_emulator.processing_s = 5.0
    with pytest.raises(ProviderError) as caught:
        run(fal(fal_emulator), request())
    assert "localhost" in str(caught.value) and "not a configured" in str(caught.value)
    assert fal_emulator.counts["poll"] == 0 and fal_emulator.counts["cancel"] == 0


# ---- 9: small ones ------------------------------------------------------------------------------

def noisy_reference(side=2048) -> Image.Image:
    """A photo-like reference whose PNG is over 8 MB, so it travels as JPEG."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))


@pytest.mark.parametrize("provider", ["wavespeed-ticket", "wavespeed-binary", "fal"])
def test_a_reference_sent_as_jpeg_is_labelled_jpeg(emulator_servers, provider):
    """The emulators refuse a file whose declared type is not what its bytes are."""
    name = provider.split("-")[0]
    emulator = emulator_servers[name]
    emulator.reset()
    emulator.expire_files()
    if provider == "wavespeed-binary":
        emulator.tickets_enabled = False
    backend = {"wavespeed": lambda: wavespeed(emulator), "fal": lambda: fal(emulator)}[name]()
    result = run(backend, request(reference=noisy_reference()))
    assert result.images and emulator.rejections == [] and result.details["reference_upload"] == "uploaded"
    [uploaded] = [data for data, content_type in emulator.files.values()
                  if content_type == "image/jpeg" and Image.open(io.BytesIO(data)).size == (2048, 2048)]
    assert uploaded[:2] == b"\xff\xd8"


def test_a_wavespeed_error_envelope_with_null_data_keeps_the_providers_message(wavespeed_emulator):
    wavespeed_emulator.faults.add("submit", "status", status=200,
                                  body={"code": 400, "message": "prompt contains banned words", "data": None})
    with pytest.raises(ProviderError, match=r"\(provider code 400\): prompt contains banned words"):
        run(wavespeed(wavespeed_emulator), request())


# ---- WaveSpeed uploads as its current SDK does ------------------------------------------------------

def test_wavespeed_uploads_with_a_ticket_and_a_keyless_put(wavespeed_emulator):
    result = run(wavespeed(wavespeed_emulator), request(seed=4))
    assert_emulator_image(result.images[0], request().prompt, 4, 0)
    counts = wavespeed_emulator.counts
    assert counts["ticket"] == 1 and counts["upload"] == 1 and counts["upload_attempt"] == 1
    assert wavespeed_emulator.rejections == []


def test_wavespeed_falls_back_to_the_binary_upload_only_without_a_ticket_endpoint(wavespeed_emulator):
    wavespeed_emulator.tickets_enabled = False
    result = run(wavespeed(wavespeed_emulator), request(seed=4))
    assert result.images and wavespeed_emulator.counts["upload"] == 1
    wavespeed_emulator.reset()
    wavespeed_emulator.faults.add("ticket", "status", status=500)
    wavespeed_emulator.faults.add("ticket", "status", status=401, body={"code": 401, "message": "bad key"})
    with pytest.raises(ProviderError, match="HTTP 401"):             # a real error is not a missing endpoint
        run(wavespeed(wavespeed_emulator), request(seed=4, reference=reference(rgb=(1, 2, 3))))
    assert wavespeed_emulator.counts["upload_attempt"] == 0


# ---- the job is created, then the answer is lost ----------------------------------------------------

@pytest.mark.parametrize(("make", "emulator_name"), [("wavespeed", "wavespeed"), ("fal", "fal"),
                                                     ("segmind_v1", "segmind"), ("segmind_v2", "segmind")])
def test_an_answer_lost_after_the_job_was_created_is_reported_never_resent(emulator_servers, make, emulator_name):
    emulator = emulator_servers[emulator_name]
    emulator.reset()
    emulator.faults.add("submit", "lose_answer")
    backend = {"wavespeed": lambda: wavespeed(emulator), "fal": lambda: fal(emulator),
               "segmind_v1": lambda: segmind(emulator, "v1"), "segmind_v2": lambda: segmind(emulator, "v2")}[make]()
    with pytest.raises(ProviderError) as caught:
        run(backend, segmind_request() if make.startswith("segmind") else request())
    assert "The job may exist at the provider" in str(caught.value)
    assert emulator.counts["submit"] == 1 and emulator.counts["submit_attempt"] == 1    # created once, never re-sent


def test_cancel_during_the_upload_sends_no_submit(wavespeed_emulator):
    wavespeed_emulator.latency_s = 0.5
    context = CancelAt(on_status="uploading", after_s=0.2)
    from pipelines import GenerationInterrupted
    with pytest.raises(GenerationInterrupted):
        run(wavespeed(wavespeed_emulator), request(), context)
    assert wavespeed_emulator.counts["submit_attempt"] == 0


# ---- fal's status stream -------------------------------------------------------------------------

def test_fal_follows_the_status_stream_and_needs_no_polling(fal_emulator):
    fal_emulator.queue_s, fal_emulator.processing_s, fal_emulator.keepalive_s = 0.3, 1.2, 0.2
    context = CancelAt()
    result = run(fal(fal_emulator), request(seed=21), context)
    assert_emulator_image(result.images[0], request().prompt, 21, 0)
    assert fal_emulator.counts["stream"] == 1 and fal_emulator.counts["poll"] == 0
    assert any("in queue (position 2)" in s for s in context.statuses)
    assert any("running" in s and "Loading InstantCharacter" in s for s in context.statuses)
    assert result.details["provider_logs"] == ["Loading InstantCharacter", "Generated images"]


@pytest.mark.parametrize("fault", [{"kind": "reset"}, {"kind": "status", "status": 405},
                                   {"kind": "status", "status": 503}])
def test_fal_falls_back_to_polling_when_the_stream_is_missing_or_breaks(fal_emulator, fault):
    fal_emulator.processing_s = 0.6
    kind = fault.pop("kind")
    fal_emulator.faults.add("stream", kind, **fault)
    result = run(fal(fal_emulator), request(seed=22))
    assert_emulator_image(result.images[0], request().prompt, 22, 0)
    if kind == "status":
        assert fal_emulator.counts["stream"] == 1 and fal_emulator.counts["poll"] >= 1
    else:       # a reset connection: aiohttp may re-open the stream once itself, or the node polls
        assert fal_emulator.counts["stream"] + fal_emulator.counts["poll"] >= 2


def test_budgets_are_checked_while_the_stream_is_quiet(fal_emulator):
    """No event comes while the job runs (keep-alives only every 15 s): the job budget still holds."""
    fal_emulator.processing_s = 30.0
    timeouts = dataclasses.replace(FAST, job=1.0)
    started = time.monotonic()
    with pytest.raises(ProviderError, match=r"still running after \d s"):
        run(fal(fal_emulator, timeouts=timeouts), request())
    assert time.monotonic() - started < 10
    assert fal_emulator.cancelled == list(fal_emulator.jobs)


def test_cancel_while_following_the_stream_cancels_the_job(fal_emulator):
    from pipelines import GenerationInterrupted

    fal_emulator.processing_s = 30.0
    context = CancelAt(on_status="running", after_s=0.3)
    with pytest.raises(GenerationInterrupted):
        run(fal(fal_emulator), request(), context)
    assert fal_emulator.cancelled == list(fal_emulator.jobs) and fal_emulator.counts["stream"] == 1


# ---- a per-provider limit on jobs at once -----------------------------------------------------------

def test_jobs_beyond_the_providers_limit_wait_their_turn_with_a_status_text(wavespeed_emulator, tmp_path):
    import asyncio

    from pipelines.cloud import JobSlots

    wavespeed_emulator.processing_s = 0.6
    slots = JobSlots(tmp_path / "slots", 2)
    contexts = [CancelAt() for _ in range(3)]

    async def three_at_once():
        backends = [wavespeed(wavespeed_emulator) for _ in range(3)]
        for backend in backends:
            backend.settings = dataclasses.replace(backend.settings, slots=slots)
        return await asyncio.gather(*(backend.generate(request(seed=index), context)
                                      for index, (backend, context) in enumerate(zip(backends, contexts))))

    results = asyncio.run(three_at_once())
    assert all(result.images for result in results)
    jobs = sorted(wavespeed_emulator.jobs.values(), key=lambda job: job["created"])
    assert len(jobs) == 3
    # the third job was only created once one of the first two was done
    assert jobs[2]["created"] >= min(job["done_seen"] for job in jobs[:2])
    assert jobs[1]["created"] < jobs[0]["done_seen"]            # but two did run at once
    assert sum(any("waiting for a free job slot" in s for s in c.statuses) for c in contexts) == 1


def _hold_a_slot_and_die(folder: str) -> None:
    import asyncio

    from pipelines.cloud import JobSlots

    async def hold():
        async with JobSlots(folder, 1).hold("wavespeed", asyncio.sleep, lambda waited: None):
            os._exit(0)                                # dies while holding the slot

    asyncio.run(hold())


def test_a_slot_held_by_a_process_that_died_is_free_again(tmp_path):
    import asyncio

    from pipelines.cloud import JobSlots

    process = multiprocessing.get_context("spawn").Process(target=_hold_a_slot_and_die, args=(str(tmp_path),))
    process.start()
    process.join(60)
    waited = []

    async def take():
        async with JobSlots(tmp_path, 1).hold("wavespeed", asyncio.sleep, waited.append):
            return True

    assert asyncio.run(asyncio.wait_for(take(), 5)) and waited == []


def test_an_unusable_slots_folder_never_fails_a_run(wavespeed_emulator, tmp_path, caplog):
    from pipelines.cloud import JobSlots

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    backend = wavespeed(wavespeed_emulator)
    backend.settings = dataclasses.replace(backend.settings, slots=JobSlots(blocker / "slots", 1))
    assert run(backend, request()).images and "running without a limit" in caplog.text


def test_the_limit_comes_from_the_environment(tmp_path):
    from pipelines.cloud import settings_from_environment
    from pipelines.cloud.segmind import SegmindInstantID
    from pipelines.cloud.wavespeed import WaveSpeedInstantCharacter

    assert settings_from_environment(WaveSpeedInstantCharacter, tmp_path, {}).slots.limit == 3
    assert settings_from_environment(SegmindInstantID, tmp_path,
                                     {"CHARACTER_IDENTITY_MAX_JOBS_SEGMIND": "0"}).slots.limit == 0
    assert settings_from_environment(WaveSpeedInstantCharacter, None, {}).slots is None
