"""SDXL prompt encoding with weights, as the InstantID demo pipeline encodes prompts
(`pipeline_stable_diffusion_xl_instantid_full.py`, its long-prompt-weighting helper):

- weights in the usual syntax: `(word)` × 1.1, `[word]` ÷ 1.1, `(word:1.3)`, escapes `\\(`;
  `BREAK` is kept as a word of weight −1, as there;
- the first tokenizer's ids feed both text encoders (the demo does not use the second tokenizer);
- prompt and negative are padded to the same length with end tokens, then cut into chunks of 75
  tokens, each framed by start and end tokens and not padded further (so the sequence is as long
  as the prompt, not 77);
- per chunk, both encoders' penultimate hidden states are joined; the pooled embedding is the
  second encoder's projection of the last chunk;
- a weighted token's embedding is moved away from the chunk's end token: e = end + (e − end) × w,
  with w rounded to float16 as the demo holds its weights.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

ROUND_UP = 1.1
CHUNK = 75

_SYNTAX = re.compile(r"""
    \\\( | \\\) | \\\[ | \\] | \\\\ | \\ |   # escapes, or a lone backslash
    \( | \[ | :([+-]?[.\d]+)\) |                 # openers; ':1.3)' closes with a weight
    \) | ] | [^\\()\[\]:]+ | :                   # closers, plain text, a lone colon
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_weights(text: str) -> list[tuple[str, float]]:
    """'a (red:1.5) [cat]' → [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('cat', 1/1.1)]."""
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _SYNTAX.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ROUND_UP)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), 1 / ROUND_UP)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    pieces.append(["BREAK", -1])
                pieces.append([part, 1.0])
    for start in round_open:
        scale_from(start, ROUND_UP)
    for start in square_open:
        scale_from(start, 1 / ROUND_UP)
    if not pieces:
        pieces = [["", 1.0]]
    merged: list[list] = [pieces[0]]
    for text_part, weight in pieces[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += text_part
        else:
            merged.append([text_part, weight])
    return [(text_part, weight) for text_part, weight in merged]


def tokens_with_weights(tokenizer, text: str) -> tuple[list[int], list[float]]:
    ids: list[int] = []
    weights: list[float] = []
    for part, weight in parse_weights(text):
        part_ids = tokenizer(part, truncation=False, verbose=False).input_ids[1:-1]   # chunked below
        ids += part_ids
        weights += [weight] * len(part_ids)
    return ids, weights


def chunks(ids: list[int], weights: list[float], start: int, end: int) -> list[tuple[list[int], list[float]]]:
    """Chunks of at most 75 tokens framed by start/end; a final (possibly empty) chunk always follows."""
    out = []
    while len(ids) >= CHUNK:
        out.append(([start] + ids[:CHUNK] + [end], [1.0] + weights[:CHUNK] + [1.0]))
        ids, weights = ids[CHUNK:], weights[CHUNK:]
    out.append(([start] + ids + [end], [1.0] + weights + [1.0]))
    return out


@dataclass(frozen=True)
class PromptEmbeddings:
    embeds: torch.Tensor              # [1, L, 2048]
    negative_embeds: torch.Tensor     # [1, L, 2048]
    pooled: torch.Tensor              # [1, 1280]
    negative_pooled: torch.Tensor


def encode_weighted(tokenizer, text_encoder, text_encoder_2, prompt: str, negative_prompt: str,
                    device: torch.device) -> PromptEmbeddings:
    prompt_ids, prompt_weights = tokens_with_weights(tokenizer, prompt)
    negative_ids, negative_weights = tokens_with_weights(tokenizer, negative_prompt)
    length = max(len(prompt_ids), len(negative_ids))
    end = tokenizer.eos_token_id
    prompt_ids += [end] * (length - len(prompt_ids))
    prompt_weights += [1.0] * (length - len(prompt_weights))
    negative_ids += [end] * (length - len(negative_ids))
    negative_weights += [1.0] * (length - len(negative_weights))

    def encode(ids: list[int], weights: list[float]):
        embeds, pooled = [], None
        for chunk_ids, chunk_weights in chunks(ids, weights, tokenizer.bos_token_id, end):
            tensor = torch.tensor([chunk_ids], dtype=torch.long, device=device)
            first = text_encoder(tensor, output_hidden_states=True)
            second = text_encoder_2(tensor, output_hidden_states=True)
            pooled = second[0]
            joined = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)[0]
            held = torch.tensor(chunk_weights, dtype=torch.float16).float()
            weighted = held != 1.0
            if weighted.any():
                factor = held.to(device=device, dtype=joined.dtype)[:, None]
                moved = joined[-1] + (joined - joined[-1]) * factor
                joined = torch.where(weighted.to(device)[:, None], moved, joined)
            embeds.append(joined[None])
        return torch.cat(embeds, dim=1), pooled

    embeds, pooled = encode(prompt_ids, prompt_weights)
    negative_embeds, negative_pooled = encode(negative_ids, negative_weights)
    return PromptEmbeddings(embeds, negative_embeds, pooled, negative_pooled)
