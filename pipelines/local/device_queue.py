"""One device, one denoising loop: the turns local generations take on a compute device.

A turn covers a whole generation — text encoding, reference encoding, denoising and decoding — not
each phase alone. On one device the phases of two generations cannot run faster interleaved (each
is device-bound and one follows the other), but interleaved they make each pipeline's placement
fight the other's: an offloading pipeline moves gigabytes in for every phase, a resident one asks
the host to evict the other's models, and both pay again at the next phase. One generation at a time
gives the first image sooner and the same total time. CPU-only preparation (reading a LoRA file,
face analysis) runs outside the turn, so its errors come at once.

Turns are first come, first served. A waiter polls: it shows who holds the device, and stops at
Cancel without ever taking it. The work runs in a worker thread that releases the turn itself when
it ends — a caller cancelled mid-run (ComfyUI cancels the other nodes of a failed prompt) must not
free a device that is still computing; it asks the work to stop at its next step instead.

Plain threading primitives, polled from the event loop: asyncio's belong to one loop, and ComfyUI
runs each prompt in a fresh one while worker threads come and go.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from ..contract import GenerationInterrupted, RunContext

T = TypeVar("T")
POLL_SECONDS = 0.05


class DeviceQueue:
    """The turns on one device."""

    def __init__(self, name: str):
        self.name = name
        self._mutex = threading.Lock()
        self._waiting: list[DeviceTurn] = []
        self._holder: DeviceTurn | None = None

    def join(self, owner: str) -> "DeviceTurn":
        """A place at the back of the queue; `owner` is how waiters name the holder."""
        turn = DeviceTurn(self, owner)
        with self._mutex:
            self._waiting.append(turn)
        return turn

    def holder(self) -> str | None:
        with self._mutex:
            return None if self._holder is None else self._holder.owner

    def _take(self, turn: "DeviceTurn") -> bool:
        with self._mutex:
            if self._holder is None and self._waiting and self._waiting[0] is turn:
                self._waiting.pop(0)
                self._holder = turn
                return True
            return False

    def _leave(self, turn: "DeviceTurn") -> None:
        with self._mutex:
            if turn in self._waiting:
                self._waiting.remove(turn)
            if self._holder is turn:
                self._holder = None


@dataclass(eq=False)
class DeviceTurn:
    queue: DeviceQueue
    owner: str
    working: bool = False
    finished: bool = False
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def try_take(self) -> bool:
        return self.queue._take(self)

    def start_work(self) -> bool:
        """Called by the worker thread: False when the caller already gave the turn back."""
        with self._mutex:
            if self.finished:
                return False
            self.working = True
            return True

    def finish(self) -> None:
        """Leave the queue or give the device back (idempotent)."""
        with self._mutex:
            self.finished = True
        self.queue._leave(self)

    def finish_unless_working(self) -> None:
        """The caller's way out: a worker that started releases the turn itself when it ends."""
        with self._mutex:
            if self.working:
                return
            self.finished = True
        self.queue._leave(self)


def device_word(device) -> str:
    return "CPU" if getattr(device, "type", str(device)) == "cpu" else "GPU"


def owner_label(context: RunContext, backend: str) -> str:
    """How waiters name this generation: its ComfyUI node where the context knows one."""
    node_id = getattr(context, "node_id", None)
    return f"node {node_id}, {backend}" if node_id is not None else "another local generator"


async def run_on_device(queue: DeviceQueue | None, device, backend: str, context: RunContext,
                        work: Callable[[], T], stop: threading.Event) -> tuple[T, dict[str, float]]:
    """Wait for the device's turn, then run `work` in a worker thread holding it. `stop` is set when
    this caller is cancelled while the work runs (the work's step callback should then raise).
    Returns the work's result and timings: `device_wait` (seconds), `device_from` / `device_until`
    (Unix time the turn was held). Without a queue (no host), the work runs at once."""
    asked = time.monotonic()
    turn = None
    if queue is not None:
        turn = queue.join(owner_label(context, backend))
        shown = None
        try:
            while True:
                if context.interrupted():          # checked before every try: a cancelled waiter never takes it
                    raise GenerationInterrupted(f"{backend}: cancelled while waiting for the {device_word(device)}")
                if turn.try_take():
                    break
                holder = queue.holder() or "another local generator"
                if holder != shown:
                    shown = holder
                    context.report_status(f"{backend}: waiting for the {device_word(device)} (used by {holder})")
                await asyncio.sleep(POLL_SECONDS)
        except BaseException:
            turn.finish()
            raise
    waited = time.monotonic() - asked
    held = {}

    def hold_and_work():
        if turn is not None and not turn.start_work():
            raise GenerationInterrupted(f"{backend}: cancelled before starting")
        held["from"] = time.time()
        try:
            return work()
        finally:
            held["until"] = time.time()
            if turn is not None:
                turn.finish()

    try:
        result = await asyncio.to_thread(hold_and_work)
    except BaseException:
        stop.set()
        if turn is not None:
            turn.finish_unless_working()
        raise
    return result, {"device_wait": waited, "device_from": held["from"], "device_until": held["until"]}
