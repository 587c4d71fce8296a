"""Remember which reference images were already uploaded, so a new seed or prompt does not upload
the same face again. Entries expire before the provider deletes the file.

Kept on disk (the node layer puts it in ComfyUI's user folder, which is not served over HTTP), so
it survives restarts and needs no process-wide state. Without a path it lives in memory for the
lifetime of the cache object.

The cache only saves uploads; it never decides whether a run works. Reading a missing or corrupt
file gives an empty cache, and writing is best-effort: a full disk, a read-only folder or a locked
file is logged and the run goes on (the next run simply uploads again). Two ComfyUI processes
sharing the folder each write a complete file and rename it into place, so the file is never
corrupt; when both write at once, the entry of one of them is lost, which costs one re-upload later.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger("character_identity")


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
            return dict(self._memory)
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("url"), str)
                and isinstance(v.get("expires"), (int, float))}

    def _save(self, entries: dict[str, dict]) -> None:
        if self.path is None:
            self._memory = entries
            return
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # write-then-rename: a crash or a concurrent reader never sees half a file
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads-", suffix=".json")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entries, out)
            os.replace(temporary, self.path)
            temporary = None
        except OSError as exc:
            log.warning("[Character Identity] could not write the upload cache %s (%s); the reference will be "
                        "uploaded again next time", self.path, exc.strerror or exc)
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    def get(self, key: str) -> str | None:
        entry = self._load().get(key)
        if entry and entry["expires"] > self.clock():
            return entry["url"]
        return None

    def put(self, key: str, url: str, keep_s: float) -> None:
        now = self.clock()
        entries = {k: v for k, v in self._load().items() if v["expires"] > now}
        entries[key] = {"url": url, "expires": now + keep_s}
        self._save(entries)

    def evict(self, key: str) -> None:
        """Forget an entry (the provider said its URL is gone or unusable)."""
        entries = self._load()
        if entries.pop(key, None) is not None:
            self._save(entries)
