"""What a provider's answer may make the pack do (issue 13, items 5 and 6): output addresses are
read only over http(s) (or as data: URIs), never more of them than were asked for; a non-2xx status
the protocol expects (WaveSpeed's 404/405 for a missing ticket endpoint, Segmind's 422) is read as
a status, not as JSON, whatever body a web server or proxy puts on it."""
from __future__ import annotations

import time
from http import HTTPStatus

import numpy as np
import pytest

from cloud_helpers import assert_emulator_image, fal, request, run, segmind, wavespeed
from pipelines.cloud import ProviderError

BACKENDS = ("wavespeed", "fal", "segmind_v1", "segmind_v2")


def segmind_request(**changes):
    return request(**{"steps": 10, "guidance": 5.0, "identity_strength": 0.8, **changes})


def setup(emulator_servers, make: str):
    emulator = emulator_servers[make.split("_")[0]]
    emulator.reset()
    backend = {"wavespeed": lambda: wavespeed(emulator), "fal": lambda: fal(emulator),
               "segmind_v1": lambda: segmind(emulator, "v1"), "segmind_v2": lambda: segmind(emulator, "v2")}[make]()
    return emulator, backend


def answer_with_outputs(emulator, make: str, urls: list[str]) -> None:
    """Script the provider's finished-job answer to list `urls` as the job's images."""
    if make == "wavespeed":
        emulator.faults.add("poll", "status", status=200, body={"code": 200, "message": "success", "data": {
            "id": "ws-x", "status": "completed", "outputs": urls, "has_nsfw_contents": [False] * len(urls)}})
    elif make == "fal":
        emulator.faults.add("result", "status", status=200, body={
            "images": [{"url": url, "width": 512, "height": 512} for url in urls], "seed": 1})
    elif make == "segmind_v1":
        emulator.faults.add("submit", "status", status=200, body={"images": urls})
    else:
        emulator.faults.add("result", "status", status=200, body={"status": "COMPLETED", "output": urls})


# ---- 5: only http(s), never more than requested -----------------------------------------------------

@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/out.png", "gopher://127.0.0.1/1"])
@pytest.mark.parametrize("make", BACKENDS)
def test_an_output_address_that_is_not_http_is_refused_at_once(emulator_servers, make, url):
    emulator, backend = setup(emulator_servers, make)
    answer_with_outputs(emulator, make, [url])
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        run(backend, segmind_request(seed=3) if make.startswith("segmind") else request(seed=3))
    scheme = url.split(":")[0]
    text = str(caught.value)
    assert text.startswith(f"{backend.name}: downloading image 1: the provider gave a '{scheme}:' address; "
                           "only http(s) addresses are fetched")
    assert "/etc/passwd" not in text
    assert time.monotonic() - started < 3                   # not retried as if it were a network hiccup


@pytest.mark.parametrize("make", BACKENDS)
def test_outputs_beyond_those_requested_are_ignored_unread_and_counted(emulator_servers, make):
    emulator, backend = setup(emulator_servers, make)
    emulator.extra_outputs = 3
    req = (segmind_request if make.startswith("segmind") else request)(seed=5, num_images=2)
    result = run(backend, req)
    assert len(result.images) == 2 and len(result.safety_flags) in (0, 2)
    for index, image in enumerate(result.images):
        assert_emulator_image(image, req.prompt, 5, index, tolerance=5)
    assert result.info()["ignored_outputs"] == 3
    if make != "segmind_v1":                                  # v1 sends its images inline (base64)
        assert emulator.counts["download"] == 2


@pytest.mark.parametrize("make", ["wavespeed", "fal", "segmind_v2"])
def test_an_extra_output_is_never_read_whatever_its_address(emulator_servers, make):
    emulator, backend = setup(emulator_servers, make)
    req = segmind_request(seed=6) if make.startswith("segmind") else request(seed=6)
    good = run(backend, req)
    url = f"{emulator.url}/files/{list(emulator.files)[-1]}"       # the result file that run stored last
    answer_with_outputs(emulator, make, [url, "file:///etc/passwd", f"{emulator.url}/files/missing.png"])
    downloads = emulator.counts["download"]
    result = run(backend, req)
    assert len(result.images) == 1 and result.details["ignored_outputs"] == 2
    assert emulator.counts["download"] == downloads + 1
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(good.images[0]))


# ---- 6: an accepted non-2xx status is never parsed as JSON ----------------------------------------

@pytest.mark.parametrize("body", ["text", "html"])
@pytest.mark.parametrize("status", [404, 405])
def test_wavespeed_falls_back_to_the_binary_upload_whatever_body_the_404_or_405_has(wavespeed_emulator, status, body):
    wavespeed_emulator.expire_files()
    wavespeed_emulator.faults.add("ticket", body, status=status)
    result = run(wavespeed(wavespeed_emulator), request(seed=11))
    assert_emulator_image(result.images[0], request().prompt, 11, 0)
    assert wavespeed_emulator.counts["ticket"] == 1                      # read once, not retried as malformed
    assert wavespeed_emulator.counts["upload"] == 1 and wavespeed_emulator.counts["upload_attempt"] == 1
    assert wavespeed_emulator.rejections == []


@pytest.mark.parametrize("style", ["aiohttp", "nginx"])
def test_wavespeed_without_a_ticket_endpoint_answering_as_real_servers_do(wavespeed_emulator, style):
    wavespeed_emulator.expire_files()
    wavespeed_emulator.tickets_enabled = False
    wavespeed_emulator.unknown_routes = style
    result = run(wavespeed(wavespeed_emulator), request(seed=12))
    assert_emulator_image(result.images[0], request().prompt, 12, 0)
    assert wavespeed_emulator.counts["ticket"] == 1 and wavespeed_emulator.counts["upload"] == 1


@pytest.mark.parametrize("body", ["text", "html"])
def test_a_segmind_422_without_a_json_body_is_a_clear_error_at_once(segmind_emulator, body):
    segmind_emulator.processing_s = 30.0
    segmind_emulator.faults.add("poll", body, status=422)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        run(segmind(segmind_emulator, "v2"), segmind_request())
    expected = "the provider answered with an HTML page" if body == "html" else f"422: {HTTPStatus(422).phrase}"
    assert f"checking the job (HTTP 422): {expected}" in str(caught.value)
    assert time.monotonic() - started < 5 and segmind_emulator.counts["poll"] == 1


def test_the_emulators_answer_unknown_paths_as_aiohttp_and_nginx_do(emulator_servers):
    import urllib.error
    import urllib.request

    for emulator in emulator_servers.values():
        emulator.reset()
        for style, content_type, text in [("aiohttp", "text/plain", "404: Not Found"),
                                          ("nginx", "text/html", "<center><h1>404 Not Found</h1></center>")]:
            emulator.unknown_routes = style
            for path in ("/no/such/path", "/files/never-stored.png"):
                with pytest.raises(urllib.error.HTTPError) as caught:
                    urllib.request.urlopen(f"{emulator.url}{path}", timeout=5)
                assert caught.value.code == 404
                assert caught.value.headers.get_content_type() == content_type
                assert text in caught.value.read().decode()
        emulator.reset()
