"""A request that carries a key never follows a redirect to another origin (issue 13, item 4).

aiohttp follows redirects by itself and drops only `Authorization` on the way: Segmind's
`x-api-key` went to whatever host a 302 named. The pack now follows redirects itself, checks every
hop, and refuses a hop that would carry the key off the provider's configured addresses. Checked
against a second local server (`Recorder`, another origin) that records everything it receives."""
from __future__ import annotations

import asyncio
import io

import aiohttp
import pytest

from cloud_helpers import FAST, TEST_KEYS, CancelAt, assert_emulator_image, fal, request, run, segmind, wavespeed
from emulators.common import Recorder
from pipelines import DetachedRunContext, GenerationInterrupted
from pipelines.cloud import ProviderError
from pipelines.cloud.transport import MAX_REDIRECTS, CloudCall

KEY = "sk-redirect-test-5f0c3e9a71"


@pytest.fixture(scope="module")
def servers():
    """Two origins: `home` plays the provider's configured address, `foreign` any other host."""
    home, foreign = Recorder().start(), Recorder().start()
    yield home, foreign
    home.stop()
    foreign.stop()


@pytest.fixture
def home(servers):
    servers[0].reset()
    return servers[0]


@pytest.fixture
def foreign(servers):
    servers[1].reset()
    return servers[1]


def call(home_url: str, action, auth_headers=None):
    """Run `action(http)` inside a CloudCall whose only configured address is `home_url`."""

    async def main():
        async with CloudCall("Test provider", "TEST_KEY", DetachedRunContext(),
                             auth_headers=auth_headers or {"x-api-key": KEY}, trusted_urls=[home_url],
                             secrets=[KEY], timeouts=FAST, backoff_s=0.01) as http:
            return await action(http)

    return asyncio.run(main())


def carries(record: dict, secret: str) -> bool:
    return secret in repr(record["headers"]) or secret.encode() in record["body"]


# ---- the transport: every hop checked, HTTP's method rules ---------------------------------------

@pytest.mark.parametrize(("status", "method", "then_method", "body_kept"), [
    (301, "POST", "GET", False), (302, "POST", "GET", False), (303, "POST", "GET", False),
    (307, "POST", "POST", True), (308, "POST", "POST", True),
    (302, "PUT", "PUT", True), (303, "PUT", "GET", False), (307, "PUT", "PUT", True),
])
def test_a_same_origin_redirect_is_followed_with_https_method_rules(home, status, method, then_method, body_kept):
    home.faults.add("any", "redirect", status=status, body="/moved/here?x=1")     # relative, as servers send it
    response = call(home.url, lambda http: http.request(method, f"{home.url}/api/submit", "submitting",
                                                        json={"prompt": "a knight"}))
    assert response.status == 200 and response.json() == {"recorded": True}
    first, second = home.received
    assert (first["method"], first["path"]) == (method, "/api/submit")
    assert (second["method"], second["path"]) == (then_method, "/moved/here?x=1")
    assert second["headers"]["x-api-key"] == KEY                       # same origin: the key may go
    assert (second["body"] == b'{"prompt": "a knight"}') is body_kept
    assert ("Content-Type" in second["headers"]) is body_kept


def test_a_multipart_body_is_built_again_for_a_307(home):
    def form() -> aiohttp.FormData:
        fields = aiohttp.FormData()
        fields.add_field("file", b"\x89PNG-bytes", filename="reference.png", content_type="image/png")
        return fields

    home.faults.add("any", "redirect", status=307, body="/upload/again")
    call(home.url, lambda http: http.request("POST", f"{home.url}/upload", "uploading", data=form))
    first, second = home.received
    assert second["method"] == "POST" and second["path"] == "/upload/again"
    for record in (first, second):          # each a whole multipart body (each with its own boundary)
        assert b'name="file"; filename="reference.png"\r\n\r\n\x89PNG-bytes\r\n--' in record["body"]


@pytest.mark.parametrize("header", [{"x-api-key": KEY}, {"Authorization": f"Bearer {KEY}"},
                                    {"Authorization": f"Key {KEY}"}, {"X-Custom-Token": KEY}])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_keyed_request_never_follows_a_redirect_to_another_origin(home, foreign, header, status):
    home.faults.add("any", "redirect", status=status, body=f"{foreign.url}/collect?from=redirect")
    with pytest.raises(ProviderError) as caught:
        call(home.url, lambda http: http.request("POST", f"{home.url}/api/submit", "submitting", json={}),
             auth_headers=header)
    text = str(caught.value)
    assert text.startswith("Test provider: submitting") and f"(HTTP {status})" in text
    assert f"redirected the request to 127.0.0.1:{foreign.port}" in text and "the API key was not sent there" in text
    assert KEY not in text and "collect" not in text
    assert foreign.received == [] and len(home.received) == 1           # refused, not retried


def test_a_scheme_relative_or_downgrading_redirect_is_another_origin_too(home, foreign):
    for location in (f"//127.0.0.1:{foreign.port}/collect", f"https://127.0.0.1:{home.port}/same-port-other-scheme"):
        home.faults.add("any", "redirect", status=302, body=location)
        with pytest.raises(ProviderError, match="the API key was not sent there"):
            call(home.url, lambda http: http.request("GET", f"{home.url}/status", "checking the job"))
    assert foreign.received == [] and len(home.received) == 2


def test_a_redirect_from_one_configured_address_to_another_is_followed(home, foreign):
    """fal has two configured addresses (queue and REST): a hop between them stays with the provider."""
    home.faults.add("any", "redirect", status=307, body=f"{foreign.url}/rest/token")

    async def action(http):
        http.trusted.add(("http", "127.0.0.1", foreign.port))
        return await http.request("POST", f"{home.url}/queue/x", "asking", json={})

    assert call(home.url, action).status == 200
    assert foreign.received[0]["headers"]["x-api-key"] == KEY


def test_the_cancel_and_the_status_stream_check_every_hop_too(home, foreign):
    home.faults.add("any", "redirect", status=302, body=f"{foreign.url}/cancel")
    assert call(home.url, lambda http: http.best_effort("PUT", f"{home.url}/cancel")) is None

    async def follow(http):
        async for _ in http.events(f"{home.url}/status/stream", "watching the job"):
            pass

    home.faults.add("any", "redirect", status=307, body=f"{foreign.url}/stream")
    with pytest.raises(ProviderError, match="the API key was not sent there"):
        call(home.url, follow)
    assert foreign.received == [] and len(home.received) == 2


def test_a_redirect_loop_ends_after_a_bounded_number_of_hops(home):
    home.faults.add("any", "redirect", status=302, times=MAX_REDIRECTS + 3)
    with pytest.raises(ProviderError, match=f"more than {MAX_REDIRECTS} redirects"):
        call(home.url, lambda http: http.request("GET", f"{home.url}/loop", "checking the job"))
    assert len(home.received) == MAX_REDIRECTS + 1


def test_an_upload_token_stays_on_its_own_origin(home, foreign):
    """Not the provider's key, but a credential all the same (fal's CDN upload token)."""
    home.faults.add("any", "redirect", status=307, body=f"{foreign.url}/files/upload")
    with pytest.raises(ProviderError, match="another origin. The redirect was not followed: the request's "
                                            "credentials were not sent there"):
        call(home.url, lambda http: http.request("POST", f"{home.url}/files/upload", "uploading",
                                                 authenticated=False, data=b"bytes",
                                                 headers={"Authorization": "Bearer upload-token-123"}))
    assert foreign.received == []


def test_a_download_follows_a_redirect_to_another_http_host_without_any_key(home, foreign):
    foreign.answers["/cdn/image.png"] = (b"image-bytes", "image/png")
    home.faults.add("any", "redirect", status=302, body=f"{foreign.url}/cdn/image.png")
    data = call(home.url, lambda http: http.download(f"{home.url}/result/1.png", "downloading image 1", 1024))
    assert data == b"image-bytes"
    assert all(not carries(record, KEY) and "Authorization" not in record["headers"]
               for record in home.received + foreign.received)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/image.png", "gopher://x/1"])
def test_a_download_never_follows_a_redirect_off_http(home, target):
    home.faults.add("any", "redirect", status=302, body=target)
    scheme = target.split(":")[0]
    with pytest.raises(ProviderError) as caught:
        call(home.url, lambda http: http.download(f"{home.url}/result/1.png", "downloading image 1", 1024))
    assert f"the provider gave a '{scheme}:' address; only http(s) addresses are fetched" in str(caught.value)
    assert len(home.received) == 1                                       # refused at once, not retried


# ---- every provider, every request that carries its key -------------------------------------------

def segmind_request(**changes):
    return request(**{"steps": 10, "guidance": 5.0, "identity_strength": 0.8, **changes})


# (backend, phase the emulator redirects, HTTP method of that request, how the emulator is prepared)
CASES = {
    "wavespeed-ticket": ("wavespeed", "ticket", "POST", None),
    "wavespeed-binary-upload": ("wavespeed", "upload", "POST", "no_tickets"),
    "wavespeed-submit": ("wavespeed", "submit", "POST", None),
    "wavespeed-poll": ("wavespeed", "poll", "GET", None),
    "fal-submit": ("fal", "submit", "POST", None),
    "fal-stream": ("fal", "stream", "GET", None),
    "fal-poll": ("fal", "poll", "GET", "no_stream"),
    "fal-result": ("fal", "result", "GET", None),
    "segmind-v1-submit": ("segmind_v1", "submit", "POST", None),
    "segmind-v2-submit": ("segmind_v2", "submit", "POST", None),
    "segmind-v2-poll": ("segmind_v2", "poll", "GET", None),
    "segmind-v2-result": ("segmind_v2", "result", "GET", None),
}
KEY_OF = {"wavespeed": "WAVESPEED_API_KEY", "fal": "FAL_KEY", "segmind_v1": "SEGMIND_API_KEY",
          "segmind_v2": "SEGMIND_API_KEY"}


def prepared(emulator_servers, make: str, setup: str | None):
    emulator = emulator_servers[make.split("_")[0]]
    emulator.reset()
    emulator.expire_files()                       # no cached upload: every run uploads
    if setup == "no_tickets":
        emulator.tickets_enabled = False
    if setup == "no_stream":
        emulator.stream_enabled = False
    backend = {"wavespeed": lambda: wavespeed(emulator), "fal": lambda: fal(emulator),
               "segmind_v1": lambda: segmind(emulator, "v1"), "segmind_v2": lambda: segmind(emulator, "v2")}[make]()
    return emulator, backend, segmind_request(seed=9) if make.startswith("segmind") else request(seed=9)


def key_parts(make: str) -> list[str]:
    key = TEST_KEYS[KEY_OF[make]]
    return [key, *key.split(":")]


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("case", list(CASES))
def test_no_provider_sends_its_key_through_a_redirect_to_another_origin(emulator_servers, foreign, case, status):
    make, phase, _, setup = CASES[case]
    emulator, backend, req = prepared(emulator_servers, make, setup)
    emulator.faults.add(phase, "redirect", status=status, body=f"{foreign.url}/collect")
    with pytest.raises(ProviderError) as caught:
        run(backend, req)
    text = str(caught.value)
    assert text.startswith(backend.name) and "the API key was not sent there" in text
    assert f"redirected the request to 127.0.0.1:{foreign.port}" in text
    assert not any(part in text for part in key_parts(make))
    assert foreign.received == []
    assert emulator.counts[f"fault:{phase}:redirect"] == 1


@pytest.mark.parametrize("case", list(CASES))
def test_a_same_origin_redirect_still_works_for_every_provider(emulator_servers, case):
    make, phase, method, setup = CASES[case]
    for status in (307, 308) if method == "POST" else (302, 303, 307):
        emulator, backend, req = prepared(emulator_servers, make, setup)
        emulator.faults.add(phase, "redirect", status=status)          # the same path again, relative
        result = run(backend, req)
        assert_emulator_image(result.images[0], req.prompt, 9, 0, tolerance=5)
        assert emulator.counts[f"fault:{phase}:redirect"] == 1 and emulator.counts["submit"] == 1
        assert emulator.rejections == []


def test_fal_token_redirected_elsewhere_is_not_followed_and_the_reference_goes_inline(fal_emulator, foreign):
    fal_emulator.expire_files()
    fal_emulator.faults.add("token", "redirect", status=307, body=f"{foreign.url}/storage/auth/token")
    result = run(fal(fal_emulator), request(seed=9))
    assert result.details["reference_upload"] == "inline (CDN upload failed)"
    assert foreign.received == [] and fal_emulator.counts["fault:token:redirect"] == 1


@pytest.mark.parametrize("status", [302, 307])
def test_fals_cancel_never_follows_a_redirect_to_another_origin(fal_emulator, foreign, status):
    fal_emulator.processing_s = 30.0
    fal_emulator.faults.add("cancel", "redirect", status=status, body=f"{foreign.url}/cancel")
    context = CancelAt(on_status="running", after_s=0.2)
    with pytest.raises(GenerationInterrupted):
        run(fal(fal_emulator), request(), context)
    assert fal_emulator.counts["fault:cancel:redirect"] == 1 and foreign.received == []
    assert any("asked the provider to cancel" in s and "(no answer)" in s for s in context.statuses)


def test_fals_cancel_follows_a_same_origin_redirect(fal_emulator):
    fal_emulator.processing_s = 30.0
    fal_emulator.faults.add("cancel", "redirect", status=307)
    with pytest.raises(GenerationInterrupted):
        run(fal(fal_emulator), request(), CancelAt(on_status="running", after_s=0.2))
    assert fal_emulator.cancelled == list(fal_emulator.jobs) and fal_emulator.counts["fault:cancel:redirect"] == 1


@pytest.mark.parametrize("provider", ["wavespeed", "fal"])
def test_a_result_image_redirected_to_another_host_is_downloaded_without_the_key(emulator_servers, foreign,
                                                                                 provider):
    """Downloads carry no key, so they may follow a redirect to a CDN (http(s) only)."""
    from emulators.common import synth_image

    emulator, backend, req = prepared(emulator_servers, provider, None)
    png = synth_image(512, 512, _png_of(req.reference), req.prompt, 9, 0)
    foreign.answers["/cdn/out.png"] = (png, "image/png")
    emulator.faults.add("download", "redirect", status=302, body=f"{foreign.url}/cdn/out.png")
    result = run(backend, req)
    assert_emulator_image(result.images[0], req.prompt, 9, 0, tolerance=5)
    [record] = foreign.received
    assert not any(carries(record, part) for part in key_parts(provider)) and "Authorization" not in record["headers"]


def _png_of(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
