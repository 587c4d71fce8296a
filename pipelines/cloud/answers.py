"""Reading provider answers at the edge of each provider file: small typed structures built from the
JSON, so a malformed answer is one clear error (`AnswerError`, naming the field) instead of
`isinstance` checks scattered through the protocol code."""
from __future__ import annotations

from typing import Any

_MISSING = object()


class AnswerError(ValueError):
    """A provider answer that does not have the documented shape. The text names the field."""


def as_object(value: Any, what: str = "the answer") -> dict:
    if not isinstance(value, dict):
        raise AnswerError(f"{what} is not a JSON object ({type(value).__name__})")
    return value


def text(body: dict, name: str, default: Any = _MISSING) -> str | None:
    value = body.get(name)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name.endswith("id"):
        return str(value)                      # an id sent as a number is still an id
    if default is not _MISSING and value in (None, ""):
        return default
    raise AnswerError(f"'{name}' is missing or not text")


def integer(body: dict, name: str) -> int | None:
    """An optional whole number; anything else reads as absent."""
    value = body.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number(value: Any) -> float | None:
    """An optional number, also from text ("0.025"); anything else reads as absent."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def flags(value: Any) -> list[bool]:
    """A list of safety flags; anything else is no flags."""
    return [bool(flag) for flag in value] if isinstance(value, list) else []


def string_list(value: Any, what: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise AnswerError(f"{what} is not a list of URLs")
    return items
