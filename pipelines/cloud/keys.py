"""API keys: from the environment, else from a user-level config file outside any repository.

Never from a node input: a widget value would travel in workflow JSON, PNG metadata and /history.
The file is read at call time, so a key added while ComfyUI runs is picked up without a restart.
It is UTF-8 text; the byte-order mark Windows Notepad may write is fine.

    # ~/.config/comfyui-character-identity/keys.ini  (or the path in CHARACTER_IDENTITY_KEYS)
    [keys]
    WAVESPEED_API_KEY = ...
    FAL_KEY = ...
    SEGMIND_API_KEY = ...
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .transport import MissingKeyError

KEYS_FILE_ENV = "CHARACTER_IDENTITY_KEYS"


def default_keys_file(environ: Mapping[str, str]) -> Path:
    if environ.get(KEYS_FILE_ENV):
        return Path(environ[KEYS_FILE_ENV]).expanduser()
    if os.name == "nt" and environ.get("APPDATA"):
        base = Path(environ["APPDATA"])
    else:
        base = Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "comfyui-character-identity" / "keys.ini"


SAVE_AS_UTF8 = "save it as UTF-8 (in Notepad: File > Save as > Encoding: UTF-8)"


def unreadable(path: Path, detail: str, hint: str | None = None) -> MissingKeyError:
    return MissingKeyError("Character Identity", f"cannot read the keys file {path}", detail=detail, hint=hint)


def read_keys_text(path: Path) -> str:
    """The keys file as text: UTF-8, with or without the byte-order mark Windows Notepad writes.
    Anything else is a clear error naming the file; it never quotes the file (it holds keys)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc.strerror or type(exc).__name__) from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        raise unreadable(path, "it is saved as UTF-16 text", hint=f"Open it in a text editor and {SAVE_AS_UTF8}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise unreadable(path, "it is not UTF-8 text", hint=f"Open it in a text editor and {SAVE_AS_UTF8}") from None


@dataclass(frozen=True)
class KeySource:
    """Where keys come from; `environ` is injectable so tests need not touch the real environment."""

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @property
    def path(self) -> Path:
        return default_keys_file(self.environ)

    def find(self, env_name: str) -> str | None:
        return self.locate(env_name)[0]

    def source_of(self, env_name: str) -> str | None:
        """Where the key comes from — "environment", "keys file" or None — never the key itself."""
        try:
            return self.locate(env_name)[1]
        except MissingKeyError:
            return None

    def locate(self, env_name: str) -> tuple[str | None, str | None]:
        """(the key, where it comes from); (None, None) when it is in neither place."""
        value = self.environ.get(env_name, "").strip()
        if value:
            return value, "environment"
        path = self.path
        if not path.is_file():
            return None, None
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(read_keys_text(path), source=str(path))
        except configparser.Error as exc:
            # the parser's message quotes the offending line, which may hold a key: say only where
            raise unreadable(path, f"not valid INI ({type(exc).__name__})") from None
        value = parser.get("keys", env_name, fallback="").strip()
        return (value, "keys file") if value else (None, None)

    def require(self, env_name: str, provider: str) -> str:
        value = self.find(env_name)
        if value is None:
            raise MissingKeyError(
                provider, "no API key configured",
                hint=f"Set the environment variable {env_name}, or add '{env_name} = <key>' under [keys] in "
                     f"{self.path}, then run the prompt again (nothing was uploaded or paid for)",
            )
        return value
