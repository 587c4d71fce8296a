"""Pieces all cloud backends share: keys, upload cache, polling pace, redaction, settings."""
from __future__ import annotations

import os

import pytest

from cloud_helpers import TEST_KEYS, request, run, wavespeed
from pipelines.cloud import (FalInstantCharacter, KeySource, MissingKeyError, SegmindInstantID, UploadCache,
                             WaveSpeedInstantCharacter, backend_from_environment,
                             settings_from_environment)
from pipelines.cloud.keys import default_keys_file
from pipelines.cloud.transport import Redactor, poll_delay
from pipelines.cloud.uploads import content_key


def test_environment_keys_win_over_the_keys_file(tmp_path):
    keys_file = tmp_path / "keys.ini"
    keys_file.write_text("[keys]\nFAL_KEY = from-file\nSEGMIND_API_KEY = SG_file\n")
    source = KeySource({"CHARACTER_IDENTITY_KEYS": str(keys_file), "FAL_KEY": "from-env"})
    assert source.require("FAL_KEY", "fal") == "from-env"
    assert source.require("SEGMIND_API_KEY", "Segmind") == "SG_file"
    with pytest.raises(MissingKeyError) as caught:
        source.require("WAVESPEED_API_KEY", "WaveSpeed")
    assert "Set the environment variable WAVESPEED_API_KEY" in str(caught.value) and str(keys_file) in str(caught.value)


def test_the_keys_file_is_read_at_call_time(tmp_path):
    keys_file = tmp_path / "keys.ini"
    source = KeySource({"CHARACTER_IDENTITY_KEYS": str(keys_file)})
    assert source.find("FAL_KEY") is None
    keys_file.write_text("[keys]\nFAL_KEY = added-later\n")
    assert source.find("FAL_KEY") == "added-later"


def test_a_broken_keys_file_is_reported_without_quoting_it(tmp_path):
    keys_file = tmp_path / "keys.ini"
    keys_file.write_text("FAL_KEY = secret-before-any-section\n")
    with pytest.raises(MissingKeyError) as caught:
        KeySource({"CHARACTER_IDENTITY_KEYS": str(keys_file)}).find("FAL_KEY")
    assert "secret-before-any-section" not in str(caught.value) and str(keys_file) in str(caught.value)


def test_a_keys_file_saved_by_notepad_as_utf8_with_a_bom_is_read(tmp_path):
    keys_file = tmp_path / "keys.ini"
    keys_file.write_bytes("\ufeff[keys]\r\nFAL_KEY = from-notepad\r\nSEGMIND_API_KEY = SG_é\r\n".encode("utf-8"))
    source = KeySource({"CHARACTER_IDENTITY_KEYS": str(keys_file)})
    assert source.require("FAL_KEY", "fal") == "from-notepad" and source.find("SEGMIND_API_KEY") == "SG_é"
    assert source.source_of("FAL_KEY") == "keys file"


KEYS_TEXT = "[keys]\r\nFAL_KEY = falsecret-in-the-file-93b7\r\n"


@pytest.mark.parametrize(("data", "reason"), [
    (KEYS_TEXT.encode("utf-16"), "it is saved as UTF-16 text"),                 # Notepad's "Unicode" (LE + BOM)
    (KEYS_TEXT.encode("utf-16-be"), "it is saved as UTF-16 text"),              # no BOM
    (b"\xfe\xff" + KEYS_TEXT.encode("utf-16-be"), "it is saved as UTF-16 text"),
    ("[keys]\nFAL_KEY = falsecret-in-the-file-93b7-clé\n".encode("cp1252"), "it is not UTF-8 text"),
], ids=["utf-16-bom", "utf-16-be-no-bom", "utf-16-be-bom", "cp1252"])
def test_a_keys_file_in_another_encoding_is_a_clear_error_naming_the_file(tmp_path, data, reason):
    keys_file = tmp_path / "keys.ini"
    keys_file.write_bytes(data)
    source = KeySource({"CHARACTER_IDENTITY_KEYS": str(keys_file)})
    for ask in (lambda: source.require("FAL_KEY", "fal"), lambda: source.find("WAVESPEED_API_KEY")):
        with pytest.raises(MissingKeyError) as caught:
            ask()
        text = str(caught.value)
        assert text.startswith(f"Character Identity: cannot read the keys file {keys_file}: {reason}")
        assert "save it as UTF-8" in text
        assert "falsecret" not in text and "FAL_KEY" not in text and "\\x" not in text
    assert source.source_of("FAL_KEY") is None              # the key-status panel shows "not set", no traceback
    # the environment still wins without reading the file
    assert KeySource({"CHARACTER_IDENTITY_KEYS": str(keys_file), "FAL_KEY": "env"}).require("FAL_KEY", "fal") == "env"


def test_an_unreadable_keys_file_is_a_clear_error_naming_the_file(tmp_path):
    keys_file = tmp_path / "keys.ini"
    keys_file.write_text(KEYS_TEXT)
    keys_file.chmod(0)
    try:
        if os.access(keys_file, os.R_OK):
            pytest.skip("running as a user who can read any file")
        with pytest.raises(MissingKeyError, match=f"cannot read the keys file {keys_file}: Permission denied"):
            KeySource({"CHARACTER_IDENTITY_KEYS": str(keys_file)}).find("FAL_KEY")
    finally:
        keys_file.chmod(0o600)


def test_the_default_keys_file_lives_in_the_users_config_folder(tmp_path):
    assert default_keys_file({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "comfyui-character-identity/keys.ini"
    assert default_keys_file({"CHARACTER_IDENTITY_KEYS": "~/k.ini"}).name == "k.ini"


def test_upload_cache_entries_expire_and_survive_a_new_cache_object(tmp_path):
    now = [1000.0]
    path = tmp_path / "sub" / "uploads.json"
    cache = UploadCache(path, clock=lambda: now[0])
    key = content_key("wavespeed", "https://x", b"png-bytes")
    assert cache.get(key) is None
    cache.put(key, "https://cdn/a.png", keep_s=60)
    assert UploadCache(path, clock=lambda: now[0]).get(key) == "https://cdn/a.png"
    now[0] += 61
    assert cache.get(key) is None
    assert content_key("fal", "https://x", b"png-bytes") != key != content_key("wavespeed", "https://y", b"png-bytes")


def test_a_corrupt_cache_file_is_ignored_not_fatal(tmp_path):
    path = tmp_path / "uploads.json"
    path.write_text("{not json")
    cache = UploadCache(path)
    assert cache.get("k") is None
    cache.put("k", "u", 10)
    assert cache.get("k") == "u"


def test_polling_starts_soon_backs_off_and_never_exceeds_four_checks_a_second():
    delays = [poll_delay(t) for t in (0, 0.5, 1, 2, 5, 10, 60, 600)]
    assert delays[0] == 0.25 and all(d >= 0.25 for d in delays)
    assert delays == sorted(delays) and delays[-1] == 1.5


def test_a_three_second_job_is_polled_at_a_modest_pace(wavespeed_emulator):
    wavespeed_emulator.processing_s = 3.0
    run(wavespeed(wavespeed_emulator), request())
    assert 4 <= wavespeed_emulator.counts["poll"] <= 12


def test_redaction_covers_whole_keys_and_their_id_secret_parts():
    redact = Redactor([TEST_KEYS["FAL_KEY"], "", "short:ab"])
    key_id, secret = TEST_KEYS["FAL_KEY"].split(":")
    assert redact(f"bad {TEST_KEYS['FAL_KEY']} / {secret} / {key_id}") == "bad *** / *** / ***"
    assert redact("about ab and short:ab, short") == "about ab and ***, short"   # parts under 6 chars stay


def test_settings_follow_the_environment():
    environ = {"WAVESPEED_BASE_URL": "http://127.0.0.1:9/", "FAL_QUEUE_URL": "http://q", "SEGMIND_BASE_URL": "http://s",
               "CHARACTER_IDENTITY_REQUEST_TIMEOUT": "2.5", "CHARACTER_IDENTITY_JOB_TIMEOUT": "bogus"}
    settings = settings_from_environment(WaveSpeedInstantCharacter, environ=environ)
    assert settings.base_url == "http://127.0.0.1:9" and settings.timeouts.request == 2.5
    assert settings.timeouts.transfer == 7.5 and settings.timeouts.job == 1800
    assert settings_from_environment(FalInstantCharacter, environ=environ).base_url == "http://q"
    assert settings_from_environment(SegmindInstantID, environ=environ).base_url == "http://s"
    assert settings_from_environment(SegmindInstantID, environ={}).base_url == "https://api.segmind.com"
    assert settings_from_environment(WaveSpeedInstantCharacter, environ={}).base_url == "https://api.wavespeed.ai"
    assert settings_from_environment(FalInstantCharacter, environ={}).base_url == "https://queue.fal.run"
    fal = backend_from_environment("fal", environ={"FAL_REST_URL": "http://r/"})
    assert fal.url("rest") == "http://r" and backend_from_environment("fal", environ={}).url("rest") == "https://rest.fal.ai"
    assert backend_from_environment("wavespeed", "v2", environ={}).limits.backend.endswith("(v2)")
    assert backend_from_environment("segmind", environ={}).api_version == "v1"
