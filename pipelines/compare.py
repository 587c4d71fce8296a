"""Backends side by side: one labelled grid of their results, each cell captioned with the backend's
name and (when a face reference is given) its identity score, and a text report naming the best. A
backend that could not run here (no key, no model files) keeps its place as a tile that says why."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (24, 24, 24)
CAPTION = (235, 235, 235)
BEST = (120, 220, 120)
SKIPPED_TILE = (48, 48, 48)
SKIPPED_TEXT = (200, 200, 200)


@dataclass(frozen=True)
class Entry:
    label: str
    image: Image.Image | None = None
    score: float | None = None          # identity similarity; None: not scored, or no face
    scored: bool = False                # a score was asked for (so None means "no face")
    skipped: str | None = None          # why this backend did not run (then there is no image)


def label_from_info(info: str | None, fallback: str) -> str:
    """The backend's name from a generator's info JSON (`backend`), else `fallback`."""
    try:
        backend = json.loads(info).get("backend") if info else None
    except (json.JSONDecodeError, AttributeError):
        backend = None
    return str(backend) if backend else fallback


def _font(size: int):
    try:
        return ImageFont.load_default(size)
    except TypeError:                      # Pillow before 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def caption(entry: Entry, best: bool) -> str:
    if entry.skipped is not None or not entry.scored:
        return entry.label
    score = f"{entry.score:.3f}" if entry.score is not None else "no face"
    return f"{entry.label} — identity {score}" + (" (best)" if best else "")


def best_index(entries: list[Entry]) -> int | None:
    scored = [(entry.score, index) for index, entry in enumerate(entries) if entry.score is not None]
    return max(scored)[1] if scored else None


def wrapped(text: str, font, width: float, lines: int) -> list[str]:
    """`text` broken at spaces into at most `lines` lines of at most `width` pixels (the last one
    shortened with … when the text is longer)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    out, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if measure.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            out.append(line)
            line = word
    out.append(line)
    out = [_shortened(measure, item, font, width) for item in out]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = _shortened(measure, out[-1] + " …", font, width)
    return out


def _shortened(draw, text: str, font, width: float) -> str:
    while draw.textlength(text, font=font) > width and len(text) > 4:
        text = text[:-2] + "…"
    return text


def skipped_tile(reason: str, cell: int) -> Image.Image:
    """The square a backend that did not run gets: "skipped: <reason>", wrapped to fit."""
    tile = Image.new("RGB", (cell, cell), SKIPPED_TILE)
    draw = ImageDraw.Draw(tile)
    font = _font(max(12, cell // 24))
    _, text_top, _, text_bottom = draw.textbbox((0, 0), "Ag", font=font)
    step = round((text_bottom - text_top) * 1.4)
    lines = wrapped(f"skipped: {reason}", font, cell - 16, max(1, (cell - 16) // step))
    top = (cell - step * len(lines)) // 2
    for index, line in enumerate(lines):
        draw.text((8, top + index * step - text_top), line, fill=SKIPPED_TEXT, font=font)
    return tile


def grid(entries: list[Entry], cell: int = 512, columns: int | None = None) -> Image.Image:
    """Each image fitted whole into a cell×cell square (no crop, no stretch), a caption band below it;
    a skipped backend's square says why it did not run."""
    if not entries:
        raise ValueError("nothing to compare: connect at least one generator's images")
    columns = columns or min(len(entries), 3)
    rows = math.ceil(len(entries) / columns)
    font = _font(max(12, cell // 24))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, text_top, _, text_bottom = measure.textbbox((0, 0), "Ag", font=font)
    band = (text_bottom - text_top) * 2
    sheet = Image.new("RGB", (columns * cell, rows * (cell + band)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    best = best_index(entries)
    for index, entry in enumerate(entries):
        left, top = (index % columns) * cell, (index // columns) * (cell + band)
        image = skipped_tile(entry.skipped, cell) if entry.skipped is not None else entry.image.convert("RGB")
        scale = min(cell / image.width, cell / image.height)
        fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                              Image.LANCZOS)
        sheet.paste(fitted, (left + (cell - fitted.width) // 2, top + (cell - fitted.height) // 2))
        text = caption(entry, index == best)
        while draw.textlength(text, font=font) > cell - 8 and len(text) > 4:
            text = text[:-2] + "…"                  # shortened to fit its cell
        draw.text((left + 4, top + cell + band // 4 - text_top), text, fill=BEST if index == best else CAPTION,
                  font=font)
    return sheet


def report(entries: list[Entry], notes: tuple[str, ...] = ()) -> str:
    """One line per entry (a skipped one with its reason), the best identity, then `notes`."""
    best = best_index(entries)
    lines = [f"{index + 1}. {entry.label} — skipped: {entry.skipped}" if entry.skipped is not None
             else f"{index + 1}. {caption(entry, index == best)}" for index, entry in enumerate(entries)]
    if best is not None:
        lines.append(f"best identity: {entries[best].label} ({entries[best].score:.3f})")
    return "\n".join([*lines, *notes])
