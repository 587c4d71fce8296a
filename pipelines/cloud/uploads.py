"""Remember which reference images were already uploaded, so a new seed or prompt does not upload
the same face again. Entries expire before the provider deletes the file.

Kept on disk (the node layer puts it in ComfyUI's user folder, which is not served over HTTP), so
it survives restarts and needs no process-wide state. Without a path it lives in memory for the
lifetime of the cache object.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path


def content_key(provider: str, endpoint: str, data: bytes) -> str:
    """One entry per provider account endpoint and exact uploaded bytes."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{provider}|{endpoint}|{digest}"


class UploadCache:
    def __init__(self, path: Path | str | None = None, clock=time.time):
        self.path = Path(path) if path else None
        self.clock = clock
        self._memory: dict[str, dict] = {}

    def _load(self) -> dict[str, dict]:
        if self.path is None:
            return self._memory
        try:
            entries = json.loads(self.path.read_text())
            return entries if isinstance(entries, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, entries: dict[str, dict]) -> None:
        if self.path is None:
            self._memory = entries
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename: a crash or a concurrent reader never sees half a file
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(entries, out)
        os.replace(temporary, self.path)

    def get(self, key: str) -> str | None:
        entry = self._load().get(key)
        if entry and entry.get("expires", 0) > self.clock():
            return entry.get("url")
        return None

    def put(self, key: str, url: str, keep_s: float) -> None:
        now = self.clock()
        entries = {k: v for k, v in self._load().items() if v.get("expires", 0) > now}
        entries[key] = {"url": url, "expires": now + keep_s}
        self._save(entries)
