"""One device, one denoising loop, through a real ComfyUI (which runs the async nodes of a prompt
at the same time): local InstantCharacter and local InstantID in one prompt take turns on the device
— the info JSON records when each held it and how long it waited — while a cloud node in the same
prompt keeps running alongside; the waiting node says for whom it waits, and Cancel ends the wait
without the waiter ever taking the device."""
from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
from PIL import Image

import face_models
import test_comfyui_instantid as instantid
import test_comfyui_local as character
from test_comfyui_cloud import cloud_node

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def images(comfyui):
    import instantcharacter_fidelity as cases

    buffer = io.BytesIO()
    cases.reference_image().save(buffer, "JPEG", quality=95)
    reference = comfyui.upload_image(buffer.getvalue(), "device_reference.jpg")
    portrait = io.BytesIO()
    face_models.scene((120, 50, 230, 170), size=(320, 240)).save(portrait, "JPEG", quality=95)
    return reference, comfyui.upload_image(portrait.getvalue(), "device_portrait.jpg")


def two_local_generators(comfyui, images, character_steps: int, instantid_steps: int, seed: int) -> dict:
    """Node 2: local InstantCharacter (loader 10, reference 1); node 3: local InstantID (loader 20,
    face models 9, portrait 21); each saved and its info shown."""
    reference, portrait = images
    instantid_loader = instantid.loader_node(comfyui)
    instantid_loader["inputs"]["face_models"] = ["9", 0]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "21": {"class_type": "LoadImage", "inputs": {"image": portrait}},
        "9": {"class_type": instantid.FACES, "inputs": {"antelopev2": comfyui.instantid_models["antelopev2"],
                                                        "provider": "auto"}},
        "10": character.loader_node(comfyui),
        "20": instantid_loader,
        "2": character.local_node(seed=seed, steps=character_steps, prompt="one device"),
        "3": instantid.local_node(seed=seed, steps=instantid_steps, prompt="one device", reference=["21", 0],
                                  pipeline=["20", 0]),
    }
    return prompt


def with_outputs(prompt: dict, node_ids) -> dict:
    for node_id in node_ids:
        prompt[f"{node_id}s"] = {"class_type": "SaveImage", "inputs": {"images": [node_id, 0],
                                                                      "filename_prefix": f"device/{node_id}"}}
        prompt[f"{node_id}i"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 1]}}
    return prompt


def info_of(entry, node_id) -> dict:
    assert entry["status"]["status_str"] == "success", entry["status"]
    return json.loads(entry["outputs"][f"{node_id}i"]["text"][0])


def test_two_local_generators_take_turns_on_the_device_while_a_cloud_node_runs_alongside(comfyui, emulator_servers,
                                                                                          images):
    fal = emulator_servers["fal"]
    fal.reset()
    fal.processing_s = 4.0
    prompt = two_local_generators(comfyui, images, character_steps=25, instantid_steps=20, seed=61)
    prompt["4"] = cloud_node("CharIDFalInstantCharacter", seed=62)
    with_outputs(prompt, ("2", "3", "4"))
    # the emulator records jobs on this process's monotonic clock; the info JSON in Unix time
    unix_minus_monotonic = time.time() - time.monotonic()
    try:
        entry = comfyui.run(prompt)
    finally:
        processing_s = fal.processing_s
        [job] = fal.jobs.values()
        fal.reset()
    timings = {node_id: info_of(entry, node_id)["timings"] for node_id in ("2", "3")}
    turns = sorted((t["device_from"], t["device_until"]) for t in timings.values())
    assert all(start < end for start, end in turns)
    assert turns[0][1] <= turns[1][0], f"both local generators held the device at once: {turns}"
    # they did contend: ComfyUI started both, and one waited for the other's turn to end
    waiter = max(timings.values(), key=lambda t: t["device_wait"])
    assert waiter["device_wait"] > 0.3 and waiter["device_from"] == turns[1][0]

    assert info_of(entry, "4")["timings"]["total"] >= processing_s
    submitted = job["created"] + unix_minus_monotonic
    cloud = (submitted, submitted + processing_s)
    assert any(cloud[0] < end and start < cloud[1] for start, end in turns), \
        f"the cloud job {cloud} ran apart from both local turns {turns}"


def test_the_waiting_node_names_the_holder_and_cancel_ends_its_wait_without_taking_the_device(comfyui, images):
    import aiohttp

    prompt = with_outputs(two_local_generators(comfyui, images, character_steps=100, instantid_steps=100, seed=71),
                          ("2", "3"))

    async def watch():
        texts, progress = {"2": [], "3": []}, {"2": [], "3": []}
        client_id = "device-watch"
        waiter, interrupted, outcome = None, False, None

        async def cancel_once_both_are_in_place():
            # Cancel while one node denoises (a step reported) and the other waits for the device
            nonlocal interrupted
            holder = {"2": "3", "3": "2"}.get(waiter)
            if holder is not None and progress[holder] and not interrupted:
                interrupted = True
                await asyncio.to_thread(comfyui.post_json, "/interrupt", {})
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfyui.url}/ws?clientId={client_id}") as ws:
                status, body = await asyncio.to_thread(comfyui.post_json, "/prompt",
                                                       {"prompt": prompt, "client_id": client_id})
                assert status == 200, body
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY and message.data[:4] == b"\x00\x00\x00\x03":
                        node_length = int.from_bytes(message.data[4:8], "big")
                        node = message.data[8:8 + node_length].decode()
                        text = message.data[8 + node_length:].decode()
                        texts.setdefault(node, []).append(text)
                        if "waiting for the" in text:
                            waiter = node
                            await cancel_once_both_are_in_place()
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(message.data)
                        if data["type"] == "progress" and data["data"].get("node") in progress:
                            progress[data["data"]["node"]].append(data["data"]["value"])
                            await cancel_once_both_are_in_place()
                        if data["type"] in ("execution_interrupted", "execution_success", "execution_error") and \
                                data["data"].get("prompt_id") == body["prompt_id"]:
                            outcome = data["type"]
                        # sent once the prompt's event loop has closed and its worker threads ended:
                        # whatever the waiter did after the Cancel has been said by then
                        if data["type"] == "executing" and data["data"].get("node") is None and \
                                data["data"].get("prompt_id") == body["prompt_id"]:
                            return outcome, texts, progress
        return None, texts, progress

    kind, texts, progress = asyncio.run(asyncio.wait_for(watch(), 240))
    waiting = [node for node in ("2", "3") if any("waiting for the" in text for text in texts[node])]
    assert len(waiting) == 1, f"no node waited for the device: {texts}"
    [waiter] = waiting
    holder = "3" if waiter == "2" else "2"
    holder_name = {"2": "InstantCharacter (local)", "3": "InstantID (local)"}[holder]
    assert f"waiting for the CPU (used by node {holder}, {holder_name})" in " ".join(texts[waiter])
    assert kind == "execution_interrupted"
    # the waiter stopped waiting and never took the device: no generation started, no step ran
    assert not any("generating" in text for text in texts[waiter]), texts[waiter]
    assert progress[waiter] == [] and texts[waiter][-1] == "cancelled"
    assert progress[holder] and max(progress[holder]) < 100            # the holder stopped within steps

    # the device is free: the next prompt's generator takes it at once
    again = with_outputs(two_local_generators(comfyui, images, character_steps=2, instantid_steps=2, seed=72),
                         ("3",))
    del again["2"], again["10"], again["1"]
    timings = info_of(comfyui.run(again), "3")["timings"]
    assert timings["device_wait"] < 0.5
