"""At most N jobs of one provider at once — across every node of a prompt, and across ComfyUI
processes sharing the pack's folder — so extra nodes wait their turn with a status text instead of
collecting 429s (WaveSpeed's lowest tier runs 3 tasks at once and refuses a 4th).

A slot is an exclusive OS lock on one of N small files (`<provider>-<i>.lock`). The OS releases
it when its holder closes the file or dies, so a crashed ComfyUI never leaves a slot taken, and
no state lives in this process beyond the open file of a held slot.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

if os.name == "nt":                                   # pragma: no cover - Windows
    import msvcrt

    def _try_lock(handle) -> bool:
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def _try_lock(handle) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

WAIT_STEP_S = 0.25
log = logging.getLogger("character_identity")


class JobSlots:
    """`folder` holds the lock files; `limit` jobs at once (0 or None: no limit)."""

    def __init__(self, folder: Path | str, limit: int | None):
        self.folder = Path(folder)
        self.limit = limit or 0

    def _take_free_slot(self, provider: str):
        self.folder.mkdir(parents=True, exist_ok=True)
        for index in range(self.limit):
            handle = open(self.folder / f"{provider}-{index}.lock", "a+b")
            if _try_lock(handle):
                return handle
            handle.close()
        return None

    @contextlib.asynccontextmanager
    async def hold(self, provider: str, sleep: Callable[[float], Awaitable[None]],
                   waiting: Callable[[float], None]) -> AsyncIterator[None]:
        """Wait (with `sleep`, which honours Cancel) until a slot is free, then hold it.
        `waiting(seconds waited)` is called while all slots are taken."""
        if self.limit <= 0:
            yield
            return
        waited = 0.0
        try:
            while (handle := self._take_free_slot(provider)) is None:
                waiting(waited)
                await sleep(WAIT_STEP_S)
                waited += WAIT_STEP_S
        except OSError as exc:
            # the limit is a courtesy to the provider, never a reason to fail a run
            log.warning("[Character Identity] job slots in %s unusable (%s); running without a limit",
                        self.folder, exc.strerror or exc)
            yield
            return
        try:
            yield
        finally:
            handle.close()                  # closing the file releases the lock
