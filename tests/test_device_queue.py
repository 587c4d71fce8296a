"""The turns local generations take on a device (pipelines/local/device_queue.py), with real
threads and event loops and work that only sleeps: one at a time, first come first served, a
waiter that names the holder and stops at Cancel without taking the device, and a device never
given back while its work still runs."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from pipelines.contract import GenerationInterrupted
from pipelines.local.device_queue import DeviceQueue, run_on_device

GPU = torch.device("cuda", 0)          # only its type is read: nothing here touches a GPU


class Context:
    """A RunContext as ComfyUI's: a node id, its status texts, an interrupt flag."""

    def __init__(self, node_id=None):
        self.node_id = node_id
        self.statuses: list[str] = []
        self.cancel = threading.Event()

    def report_status(self, text):
        self.statuses.append(text)

    def report_progress(self, done, total, preview=None):
        pass

    def interrupted(self):
        return self.cancel.is_set()


def sleeper(seconds: float, record: list, name: str, stop: threading.Event | None = None):
    def work():
        record.append((name, "start", time.monotonic()))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                record.append((name, "stopped", time.monotonic()))
                raise GenerationInterrupted(f"{name} stopped")
            time.sleep(0.01)
        record.append((name, "end", time.monotonic()))
        return name
    return work


def spans(record):
    starts = {name: t for name, kind, t in record if kind == "start"}
    ends = {name: t for name, kind, t in record if kind in ("end", "stopped")}
    return {name: (starts[name], ends[name]) for name in starts}


def test_two_generations_take_turns_and_the_waiter_names_the_holder():
    queue, record = DeviceQueue("cuda:0"), []
    first, second = Context("2"), Context("5")

    async def both():
        one = asyncio.create_task(run_on_device(queue, GPU, "InstantCharacter (local)", first,
                                                sleeper(0.4, record, "one"), threading.Event()))
        await asyncio.sleep(0.05)
        two = run_on_device(queue, GPU, "InstantID (local)", second, sleeper(0.2, record, "two"), threading.Event())
        return await asyncio.gather(one, two)

    (result_one, timings_one), (result_two, timings_two) = asyncio.run(both())
    assert (result_one, result_two) == ("one", "two")
    (start_one, end_one), (start_two, end_two) = spans(record)["one"], spans(record)["two"]
    assert end_one <= start_two                                          # never both at once
    assert timings_one["device_until"] <= timings_two["device_from"]
    assert timings_one["device_wait"] < 0.05 and timings_two["device_wait"] >= 0.25
    assert second.statuses == ["InstantID (local): waiting for the GPU (used by node 2, InstantCharacter (local))"]
    assert first.statuses == []
    assert queue.holder() is None


def test_first_come_first_served_and_a_holder_without_a_node_is_another_local_generator():
    queue, record = DeviceQueue("cuda:0"), []
    contexts = [Context(), Context("8"), Context("9")]

    async def three():
        tasks = []
        for index, context in enumerate(contexts):
            tasks.append(asyncio.create_task(run_on_device(queue, GPU, f"g{index}", context,
                                                           sleeper(0.15, record, f"g{index}"), threading.Event())))
            await asyncio.sleep(0.02)
        return await asyncio.gather(*tasks)

    asyncio.run(three())
    assert [name for name, kind, _ in record if kind == "start"] == ["g0", "g1", "g2"]
    assert contexts[1].statuses[0] == "g1: waiting for the GPU (used by another local generator)"
    assert contexts[2].statuses[-1] == "g2: waiting for the GPU (used by node 8, g1)"      # the text follows the holder


def test_cancel_while_waiting_ends_the_wait_and_the_waiter_never_takes_the_device():
    queue, record = DeviceQueue("cpu"), []
    holder, waiter = Context("2"), Context("3")

    async def scenario():
        held = asyncio.create_task(run_on_device(queue, torch.device("cpu"), "A", holder, sleeper(0.6, record, "A"),
                                                 threading.Event()))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(run_on_device(queue, torch.device("cpu"), "B", waiter,
                                                    sleeper(0.1, record, "B"), threading.Event()))
        await asyncio.sleep(0.15)
        waiter.cancel.set()                               # the user's Cancel, seen by the waiter only
        cancelled_at = time.monotonic()
        with pytest.raises(GenerationInterrupted, match="B: cancelled while waiting for the CPU"):
            await waiting
        stopped_waiting = time.monotonic() - cancelled_at
        await held
        return stopped_waiting

    stopped_waiting = asyncio.run(scenario())
    assert stopped_waiting < 0.3                          # at the next poll, not when the holder ends
    assert [name for name, kind, _ in record if kind == "start"] == ["A"]
    assert waiter.statuses == ["B: waiting for the CPU (used by node 2, A)"]
    # nobody left in the queue: the next one takes the device at once
    _, timings = asyncio.run(run_on_device(queue, torch.device("cpu"), "C", Context(), lambda: None,
                                           threading.Event()))
    assert timings["device_wait"] < 0.05


def test_a_cancelled_caller_never_frees_a_device_its_work_still_runs_on():
    """As when ComfyUI cancels the other nodes of a failed prompt: the task is cancelled, the worker
    thread is asked to stop and the device stays taken until it has."""
    queue, record = DeviceQueue("cuda:0"), []
    stop = threading.Event()

    async def scenario():
        task = asyncio.create_task(run_on_device(queue, GPU, "A", Context("2"), sleeper(5, record, "A", stop), stop))
        await asyncio.sleep(0.1)
        task.cancel()
        held_after_cancel = queue.holder()
        with pytest.raises(asyncio.CancelledError):
            await task
        return held_after_cancel

    held_after_cancel = asyncio.run(scenario())         # asyncio.run waits for the worker thread to end
    assert stop.is_set() and held_after_cancel == "node 2, A"
    assert [kind for _, kind, _ in record] == ["start", "stopped"]
    assert queue.holder() is None


def test_turns_hold_across_event_loops_and_threads():
    """ComfyUI runs each prompt in a fresh event loop; a queue made of threading primitives is met
    by all of them."""
    queue, record = DeviceQueue("cuda:0"), []

    def prompt(name):
        asyncio.run(run_on_device(queue, GPU, name, Context(name), sleeper(0.2, record, name), threading.Event()))

    threads = [threading.Thread(target=prompt, args=(f"p{index}",)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(spans(record).values())
    assert len(ordered) == 3
    assert all(earlier[1] <= later[0] for earlier, later in zip(ordered, ordered[1:]))


def test_a_waiter_whose_prompt_ended_leaves_the_queue_without_taking_the_device():
    """ComfyUI cancels the other nodes' tasks when a prompt fails: a cancelled waiter steps out of
    line, and the one behind it is next."""
    queue, record = DeviceQueue("cuda:0"), []

    async def scenario():
        held = asyncio.create_task(run_on_device(queue, GPU, "A", Context("2"), sleeper(0.4, record, "A"),
                                                 threading.Event()))
        await asyncio.sleep(0.05)
        dropped = asyncio.create_task(run_on_device(queue, GPU, "B", Context("3"), sleeper(0.1, record, "B"),
                                                    threading.Event()))
        await asyncio.sleep(0.05)
        behind = asyncio.create_task(run_on_device(queue, GPU, "C", Context("4"), sleeper(0.1, record, "C"),
                                                   threading.Event()))
        await asyncio.sleep(0.1)
        dropped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dropped
        await asyncio.gather(held, behind)

    asyncio.run(scenario())
    assert [name for name, kind, _ in record if kind == "start"] == ["A", "C"]
    assert spans(record)["A"][1] <= spans(record)["C"][0]
    assert queue.holder() is None
