#!/usr/bin/env python3
"""Draw the pack's example character reference: an original cartoon explorer (round face, dark
hair, orange jacket, yellow scarf, teal backpack) on a white background — the reference the shipped
workflows load out of the box, so a first run needs no upload. Drawn here with PIL shapes only (no
third-party image); the PNG is committed, and the pack copies it into ComfyUI's input folder under
its own name when no file of that name is there (nodes/first_run.py).

    python scripts/make_example_reference.py [output.png]
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "workflows" / "inputs" / "character_identity_example.png"
SIZE = 512
SCALE = 4                      # drawn 4× larger, then scaled down: smooth edges

WHITE = (255, 255, 255)
SKIN = (243, 196, 160)
SKIN_SHADE = (226, 170, 134)
HAIR = (62, 39, 35)
JACKET = (232, 112, 44)
JACKET_SHADE = (196, 86, 30)
SCARF = (250, 204, 60)
TROUSERS = (52, 70, 110)
BOOTS = (88, 56, 38)
PACK = (40, 150, 140)
EYE = (40, 30, 30)
CHEEK = (240, 150, 140)
MOUTH = (150, 60, 60)


def draw_character() -> Image.Image:
    canvas = Image.new("RGB", (SIZE * SCALE, SIZE * SCALE), WHITE)
    draw = ImageDraw.Draw(canvas)

    def box(left, top, right, bottom):          # coordinates on the 512 grid
        return [left * SCALE, top * SCALE, right * SCALE, bottom * SCALE]

    # backpack behind the body
    draw.rounded_rectangle(box(186, 236, 326, 372), radius=24 * SCALE, fill=PACK)
    # legs and boots
    draw.rounded_rectangle(box(206, 380, 246, 466), radius=14 * SCALE, fill=TROUSERS)
    draw.rounded_rectangle(box(266, 380, 306, 466), radius=14 * SCALE, fill=TROUSERS)
    draw.rounded_rectangle(box(196, 452, 250, 480), radius=12 * SCALE, fill=BOOTS)
    draw.rounded_rectangle(box(262, 452, 316, 480), radius=12 * SCALE, fill=BOOTS)
    # arms, then the jacket over their tops
    draw.rounded_rectangle(box(158, 250, 196, 370), radius=18 * SCALE, fill=JACKET_SHADE)
    draw.rounded_rectangle(box(316, 250, 354, 370), radius=18 * SCALE, fill=JACKET_SHADE)
    draw.ellipse(box(160, 356, 194, 390), fill=SKIN)
    draw.ellipse(box(318, 356, 352, 390), fill=SKIN)
    draw.rounded_rectangle(box(186, 240, 326, 396), radius=30 * SCALE, fill=JACKET)
    draw.line(box(256, 262, 256, 392), fill=JACKET_SHADE, width=4 * SCALE)
    for y in (300, 334, 368):                    # buttons
        draw.ellipse(box(262, y - 5, 272, y + 5), fill=SCARF)
    # scarf
    draw.rounded_rectangle(box(196, 226, 316, 258), radius=14 * SCALE, fill=SCARF)
    draw.rounded_rectangle(box(280, 240, 304, 318), radius=10 * SCALE, fill=SCARF)
    # head: hair behind, face, hair fringe
    draw.ellipse(box(160, 52, 352, 240), fill=HAIR)
    draw.ellipse(box(176, 74, 336, 236), fill=SKIN)
    draw.ellipse(box(166, 140, 190, 176), fill=SKIN_SHADE)              # ears
    draw.ellipse(box(322, 140, 346, 176), fill=SKIN_SHADE)
    draw.chord(box(170, 56, 342, 170), start=180, end=360, fill=HAIR)
    draw.polygon([(p[0] * SCALE, p[1] * SCALE) for p in [(200, 112), (236, 112), (214, 140)]], fill=HAIR)
    draw.polygon([(p[0] * SCALE, p[1] * SCALE) for p in [(240, 112), (290, 112), (268, 132)]], fill=HAIR)
    # eyes with highlights, brows, cheeks, smile, nose
    for x in (222, 290):
        draw.ellipse(box(x - 13, 150, x + 13, 182), fill=EYE)
        draw.ellipse(box(x - 6, 155, x + 2, 164), fill=WHITE)
        draw.arc(box(x - 18, 132, x + 18, 150), start=200, end=340, fill=HAIR, width=4 * SCALE)
    draw.ellipse(box(196, 184, 220, 200), fill=CHEEK)
    draw.ellipse(box(292, 184, 316, 200), fill=CHEEK)
    draw.arc(box(238, 178, 274, 210), start=20, end=160, fill=MOUTH, width=4 * SCALE)
    draw.ellipse(box(251, 176, 261, 184), fill=SKIN_SHADE)

    # scaled down for smooth edges, then a small palette: flat drawings compress to a few KB
    picture = canvas.resize((SIZE, SIZE), Image.LANCZOS)
    return picture.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    draw_character().save(output, "PNG", optimize=True)
    print(f"wrote {output} ({output.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
