"""The compare grid and report (pipelines/compare.py)."""
from __future__ import annotations


def test_the_compare_grid_captions_each_backend_and_names_the_best():
    from PIL import Image

    from pipelines.compare import Entry, grid, label_from_info, report

    red, tall = Image.new("RGB", (200, 100), (255, 0, 0)), Image.new("RGB", (50, 100), (0, 0, 255))
    entries = [Entry("fal InstantCharacter", red, 0.41, True), Entry("InstantID (local)", tall, 0.73, True),
               Entry(label_from_info('{"backend": "Segmind InstantID (v1)"}', "input 3"), red, None, True)]
    sheet = grid(entries, cell=128)
    assert sheet.size[0] == 3 * 128 and sheet.size[1] > 128
    assert sheet.getpixel((64, 64)) == (255, 0, 0)            # fitted whole: the wide image spans its cell
    assert sheet.getpixel((128 + 10, 64)) != (0, 0, 255)      # the tall one is centred, not stretched
    assert sheet.getpixel((128 + 64, 64)) == (0, 0, 255)
    assert report(entries).splitlines() == [
        "1. fal InstantCharacter — identity 0.410", "2. InstantID (local) — identity 0.730 (best)",
        "3. Segmind InstantID (v1) — identity no face", "best identity: InstantID (local) (0.730)"]
    assert label_from_info("not json", "input 4") == "input 4"


def test_a_skipped_backend_keeps_its_place_as_a_tile_that_says_why():
    from PIL import Image

    from pipelines.compare import SKIPPED_TILE, Entry, grid, report

    reason = "node 9: no fal.ai API key: set FAL_KEY in the environment or in the keys file (README: API keys)"
    entries = [Entry("InstantCharacter (fal cloud)", skipped=reason),
               Entry("Segmind InstantID (v1)", Image.new("RGB", (64, 64), (255, 0, 0)), 0.5, True)]
    sheet = grid(entries, cell=256)
    assert sheet.size[0] == 2 * 256
    assert sheet.getpixel((4, 4)) == SKIPPED_TILE and sheet.getpixel((256 + 128, 128)) == (255, 0, 0)
    assert len(set(sheet.crop((0, 0, 256, 256)).getdata())) > 2          # the reason is written on the tile
    assert report(entries, ("identity not scored: node 3: no face models",)).splitlines() == [
        f"1. InstantCharacter (fal cloud) — skipped: {reason}",
        "2. Segmind InstantID (v1) — identity 0.500 (best)", "best identity: Segmind InstantID (v1) (0.500)",
        "identity not scored: node 3: no face models"]


def test_the_skipped_reason_is_wrapped_to_the_tile_and_shortened_when_longer():
    from pipelines.compare import _font, wrapped

    font = _font(16)
    lines = wrapped("skipped: " + "a long reason " * 40, font, 200, 4)
    assert len(lines) == 4 and lines[-1].endswith("…")
    assert wrapped("skipped: short", font, 200, 4) == ["skipped: short"]
