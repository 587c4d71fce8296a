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
