"""The cloud nodes inside a real ComfyUI, against the provider emulators, over ComfyUI's HTTP API."""
from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from cloud_helpers import REFERENCE_RGB, assert_emulator_image
from comfyui_server import error_message

pytestmark = pytest.mark.comfyui

PROMPT_TEXT = "a knight in a misty forest"
NODE_DEFAULTS = {
    "CharIDWaveSpeedInstantCharacter": {"steps": 28, "guidance": 3.5, "strength": 1.0, "api_version": "v3",
                                        "enable_safety_checker": True},
    "CharIDFalInstantCharacter": {"steps": 28, "guidance": 3.5, "strength": 1.0, "image_size": "custom",
                                  "output_format": "png", "enable_safety_checker": True, "sync_mode": False},
    "CharIDSegmindInstantID": {"steps": 10, "guidance": 5.0, "strength": 0.8, "api_version": "v1",
                               "style": "(No style)", "custom_style": "", "adapter_strength": 0.8,
                               "enhance_face_region": True},
}


@pytest.fixture(scope="module")
def reference_name(comfyui):
    image = Image.new("RGBA", (96, 128), REFERENCE_RGB + (255,))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return comfyui.upload_image(buffer.getvalue(), "cloud_reference.png")


def cloud_node(class_type: str, seed: int = 1234, **overrides) -> dict:
    inputs = {"reference": ["1", 0], "prompt": PROMPT_TEXT, "negative_prompt": "", "width": 512, "height": 512,
              "seed": seed, "num_images": 1, **NODE_DEFAULTS[class_type], **overrides}
    return {"class_type": class_type, "inputs": inputs}


def graph(reference_name: str, nodes: dict[str, dict], save: bool = True) -> dict:
    """LoadImage → each cloud node → SaveImage (images) and PreviewAny (info)."""
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": reference_name}}}
    for node_id, node in nodes.items():
        prompt[node_id] = node
        if save:
            prompt[f"{node_id}s"] = {"class_type": "SaveImage",
                                     "inputs": {"images": [node_id, 0], "filename_prefix": f"cloud/{node_id}"}}
        prompt[f"{node_id}i"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 1]}}
    return prompt


def outputs_of(comfyui, entry, node_id):
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [Image.open(io.BytesIO(comfyui.output_bytes(image))) for image in entry["outputs"][f"{node_id}s"]["images"]]
    info = json.loads(entry["outputs"][f"{node_id}i"]["text"][0])
    return images, info


@pytest.mark.parametrize(("class_type", "overrides", "emulator_name", "expected_backend"), [
    ("CharIDWaveSpeedInstantCharacter", {}, "wavespeed", "WaveSpeed InstantCharacter (v3)"),
    ("CharIDWaveSpeedInstantCharacter", {"api_version": "v2", "width": 512, "height": 640}, "wavespeed",
     "WaveSpeed InstantCharacter (v2)"),
    ("CharIDFalInstantCharacter", {"strength": 1.5, "num_images": 2}, "fal", "fal InstantCharacter"),
    ("CharIDSegmindInstantID", {"width": 640, "height": 512}, "segmind", "Segmind InstantID (v1)"),
    ("CharIDSegmindInstantID", {"api_version": "v2", "style": "custom", "custom_style": "Watercolor"}, "segmind",
     "Segmind InstantID (v2)"),
])
def test_each_cloud_node_generates_through_comfyui(comfyui, emulator_servers, reference_name, class_type, overrides,
                                                   emulator_name, expected_backend):
    emulator = emulator_servers[emulator_name]
    emulator.reset()
    node = cloud_node(class_type, seed=4321, **overrides)
    images, info = outputs_of(comfyui, comfyui.run(graph(reference_name, {"2": node})), "2")
    width, height = node["inputs"]["width"], node["inputs"]["height"]
    assert len(images) == node["inputs"]["num_images"]
    for index, image in enumerate(images):
        assert image.size == (width, height)
        assert_emulator_image(image, PROMPT_TEXT, 4321, index, tolerance=6)
    assert info["backend"] == expected_backend and info["seed"] == 4321 and info["job_id"]
    assert emulator.counts["submit"] == 1
    if class_type == "CharIDFalInstantCharacter":
        assert emulator.submissions[0]["scale"] == 1.5
    if "custom_style" in overrides:
        assert emulator.submissions[0]["style"] == "Watercolor"


def test_four_cloud_nodes_in_one_prompt_run_at_the_same_time(comfyui, emulator_servers, reference_name):
    for emulator in emulator_servers.values():
        emulator.reset()
        emulator.processing_s = 2.0
    nodes = {
        "2": cloud_node("CharIDWaveSpeedInstantCharacter", seed=1),
        "3": cloud_node("CharIDWaveSpeedInstantCharacter", seed=2, api_version="v2"),
        "4": cloud_node("CharIDFalInstantCharacter", seed=3),
        "5": cloud_node("CharIDSegmindInstantID", seed=4, api_version="v2"),
    }
    entry = comfyui.run(graph(reference_name, nodes))
    assert entry["status"]["status_str"] == "success", entry["status"]
    jobs = [job for emulator in emulator_servers.values() for job in emulator.jobs.values()]
    assert len(jobs) == 4
    # every job was submitted before any of them had finished: they overlapped
    assert max(job["created"] for job in jobs) < min(job["done_seen"] for job in jobs)


def test_a_fourth_wavespeed_node_waits_for_a_free_job_slot(comfyui, emulator_servers, reference_name):
    """WaveSpeed's default tier runs 3 tasks at once; the pack's default limit keeps to that."""
    wavespeed = emulator_servers["wavespeed"]
    wavespeed.reset()
    wavespeed.processing_s = 1.0
    nodes = {str(index): cloud_node("CharIDWaveSpeedInstantCharacter", seed=500 + index) for index in range(2, 6)}
    entry = comfyui.run(graph(reference_name, nodes, save=False))
    assert entry["status"]["status_str"] == "success", entry["status"]
    jobs = list(wavespeed.jobs.values())
    assert len(jobs) == 4

    def running_at(moment):
        return sum(job["created"] <= moment < job["done_seen"] for job in jobs)

    assert max(running_at(job["created"]) for job in jobs) == 3


def test_cancel_stops_the_node_and_cancels_the_job_at_fal(comfyui, emulator_servers, reference_name):
    fal = emulator_servers["fal"]
    fal.reset()
    fal.processing_s = 30.0
    prompt_id = comfyui.queue_prompt(graph(reference_name, {"2": cloud_node("CharIDFalInstantCharacter", seed=77)}))
    deadline = time.monotonic() + 30
    while not fal.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)                                     # the node is now polling
    asked = time.monotonic()
    assert comfyui.post_json("/interrupt", {})[0] == 200
    entry = comfyui.wait(prompt_id, timeout=30)
    stopped = time.monotonic()
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and entry["status"]["status_str"] == "error"
    assert fal.cancelled == list(fal.jobs)
    assert stopped - asked < 3.0         # Cancel lands within 1.5 s; the rest is /history polling slack


@pytest.mark.parametrize("provider", ["fal", "wavespeed"])
def test_a_cancel_landing_just_before_a_progress_update_stops_the_node_before_any_submit(
        comfyui, emulator_servers, reference_name, provider):
    """ComfyUI's progress hook clears the interrupt flag before it raises: the node must remember that
    Cancel, or it sends the billable submit next. The emulator presses Cancel while answering the
    upload, so the Cancel lands between the upload and the progress update that follows it."""
    emulator = emulator_servers[provider]
    emulator.reset()
    emulator.faults.add("upload", "callback", callback=lambda: comfyui.post_json("/interrupt", {}))
    # a reference of its own, so no earlier upload is re-used: the upload must happen in this run
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (17, 99, 3) if provider == "fal" else (3, 99, 17)).save(buffer, "PNG")
    name = comfyui.upload_image(buffer.getvalue(), f"cancel_reference_{provider}.png")
    class_type = {"fal": "CharIDFalInstantCharacter", "wavespeed": "CharIDWaveSpeedInstantCharacter"}[provider]
    entry = comfyui.run(graph(name, {"2": cloud_node(class_type, seed=606)}), timeout=60)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, entry["status"]
    assert emulator.counts["upload"] == 1 and emulator.counts["fault:upload:callback"] == 1
    assert emulator.counts["submit_attempt"] == 0, "the job was submitted (and billed) after Cancel"


def test_a_missing_key_fails_before_any_upload_and_names_the_variable(comfyui, emulator_servers, reference_name):
    segmind = emulator_servers["segmind"]
    segmind.reset()
    moved = comfyui.keys_file.with_suffix(".away")
    comfyui.keys_file.rename(moved)
    try:
        entry = comfyui.run(graph(reference_name, {"2": cloud_node("CharIDSegmindInstantID", seed=5)}))
    finally:
        moved.rename(comfyui.keys_file)
    message = error_message(entry)
    assert "SEGMIND_API_KEY" in message and str(comfyui.keys_file) in message
    assert segmind.counts["submit_attempt"] == 0


def test_bad_values_are_refused_before_any_credit_is_spent(comfyui, emulator_servers, reference_name):
    for emulator in emulator_servers.values():
        emulator.reset()
    status, body = comfyui.post_json("/prompt", {"prompt": graph(reference_name, {
        "2": cloud_node("CharIDWaveSpeedInstantCharacter", prompt="   ")})})
    assert status == 400 and "prompt must not be empty" in json.dumps(body["node_errors"]["2"])
    status, body = comfyui.post_json("/prompt", {"prompt": graph(reference_name, {
        "2": cloud_node("CharIDFalInstantCharacter", steps=80)})})
    assert status == 400 and body["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"
    status, body = comfyui.post_json("/prompt", {"prompt": graph(reference_name, {
        "2": cloud_node("CharIDWaveSpeedInstantCharacter", width=256)})})
    assert status == 400 and body["node_errors"]["2"]["errors"][0]["type"] == "value_smaller_than_min"
    entry = comfyui.run(graph(reference_name, {
        "2": cloud_node("CharIDWaveSpeedInstantCharacter", api_version="v2", prompt="x" * 10_001)}))
    assert "WaveSpeed InstantCharacter (v2): prompt length = 10001 is not allowed" in error_message(entry)
    batch = graph(reference_name, {"2": cloud_node("CharIDSegmindInstantID")})
    batch["9"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}}
    batch["2"]["inputs"]["reference"] = ["9", 0]
    assert "got a batch of 2 images" in error_message(comfyui.run(batch))
    assert sum(emulator.counts["upload_attempt"] + emulator.counts["submit_attempt"]
               for emulator in emulator_servers.values()) == 0


# (provider node, emulator, fault phase, fault kind, options, expect success?)
FAULT_MATRIX = [
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "submit", "status", {"status": 401}, False),
    ("CharIDSegmindInstantID", "segmind", "submit", "status", {"status": 406, "body": {"error": "Not enough credits"}}, False),
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "submit", "status", {"status": 402, "body": {"code": 402, "message": "Insufficient balance"}}, False),
    ("CharIDFalInstantCharacter", "fal", "submit", "status", {"status": 422, "body": {"detail": [{"loc": ["body", "prompt"], "msg": "too long"}]}}, False),
    ("CharIDFalInstantCharacter", "fal", "submit", "status", {"status": 429, "headers": {"Retry-After": "1"}}, True),
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "poll", "status", {"status": 503}, True),
    ("CharIDSegmindInstantID", "segmind", "submit", "reset", {}, False),
    ("CharIDFalInstantCharacter", "fal", "stream", "reset", {}, True),
    ("CharIDFalInstantCharacter", "fal", "stream", "status", {"status": 502}, True),
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "submit", "hang", {}, False),
    ("CharIDFalInstantCharacter", "fal", "result", "hang", {}, True),
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "poll", "malformed", {}, True),
    ("CharIDFalInstantCharacter", "fal", "submit", "malformed", {}, False),
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "job", "failed", {}, False),
    ("CharIDFalInstantCharacter", "fal", "job", "nsfw", {}, True),
    ("CharIDSegmindInstantID", "segmind", "download", "truncate", {}, True),
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "download", "short_image", {"times": 10}, False),
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "submit", "lose_answer", {}, False),
    ("CharIDSegmindInstantID", "segmind", "submit", "lose_answer", {}, False),
    ("CharIDSegmindInstantID", "segmind", "submit", "recode", {"status": 201}, True),
    ("CharIDWaveSpeedInstantCharacter", "wavespeed", "poll", "recode", {"status": 202}, True),
    ("CharIDFalInstantCharacter", "fal", "result", "status", {"status": 503, "headers": {"Retry-After": "soon"}}, True),
]


@pytest.mark.parametrize(("class_type", "emulator_name", "phase", "kind", "options", "succeeds"), FAULT_MATRIX,
                         ids=[f"{row[1]}-{row[2]}-{row[3]}-{row[4].get('status', '')}" for row in FAULT_MATRIX])
def test_fault_matrix_ends_in_recovery_or_a_clear_error_without_double_submit(
        comfyui, emulator_servers, reference_name, class_type, emulator_name, phase, kind, options, succeeds):
    emulator = emulator_servers[emulator_name]
    emulator.reset()
    # a seed per row: identical consecutive prompts would be answered from ComfyUI's cache
    seed = 1000 + [row[1:5] for row in FAULT_MATRIX].index((emulator_name, phase, kind, options))
    options = dict(options)
    times = options.pop("times", 1)
    emulator.faults.add(phase, kind, times=times, **{k: v for k, v in options.items()})
    extra = {"api_version": "v2"} if emulator_name == "segmind" and phase == "download" else {}
    started = time.monotonic()
    entry = comfyui.run(graph(reference_name, {"2": cloud_node(class_type, seed=seed, **extra)}), timeout=90)
    assert time.monotonic() - started < 60
    accepted = emulator.counts["submit"]
    assert accepted <= 1, "a billable job was submitted twice"
    if succeeds:
        images, info = outputs_of(comfyui, entry, "2")
        assert images and accepted == 1
        if kind == "nsfw":
            assert info["safety_flags"] == [True]
    else:
        message = error_message(entry)
        assert emulator.provider in message.lower() or "instant" in message.lower()
        assert "Traceback" not in message and len(message) < 2000
        if kind == "lose_answer":               # the job exists: say so, never submit again
            assert accepted == 1 and "The job may exist at the provider" in message


def test_fifty_queued_prompts_with_four_cloud_nodes_lose_no_image(comfyui, emulator_servers, reference_name):
    for emulator in emulator_servers.values():
        emulator.reset()
        emulator.processing_s = 0.05
    prompt_ids = []
    for index in range(50):
        nodes = {
            "2": cloud_node("CharIDWaveSpeedInstantCharacter", seed=1000 + index),
            "3": cloud_node("CharIDFalInstantCharacter", seed=2000 + index),
            "4": cloud_node("CharIDSegmindInstantID", seed=3000 + index),
            "5": cloud_node("CharIDSegmindInstantID", seed=4000 + index, api_version="v2"),
        }
        prompt_ids.append(comfyui.queue_prompt(graph(reference_name, nodes)))
    saved = set()
    for prompt_id in prompt_ids:
        entry = comfyui.wait(prompt_id, timeout=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
        for node_id in ("2", "3", "4", "5"):
            [image] = entry["outputs"][f"{node_id}s"]["images"]
            saved.add((image["subfolder"], image["filename"]))
    assert len(saved) == 200
    assert sum(emulator.counts["submit"] for emulator in emulator_servers.values()) == 200
    # one upload per provider for the whole run (Segmind sends the image inline)
    assert emulator_servers["wavespeed"].counts["upload"] <= 1 and emulator_servers["fal"].counts["upload"] <= 1


def test_progress_reaches_the_browser_as_node_text_and_a_progress_bar(comfyui, emulator_servers, reference_name):
    import asyncio

    import aiohttp

    fal = emulator_servers["fal"]
    fal.reset()
    fal.processing_s, fal.queue_s = 1.0, 0.6

    async def watch() -> tuple[list[str], list[dict]]:
        texts, progress = [], []
        client_id = "progress-watch"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfyui.url}/ws?clientId={client_id}") as ws:
                status, body = await asyncio.to_thread(comfyui.post_json, "/prompt", {
                    "prompt": graph(reference_name, {"2": cloud_node("CharIDFalInstantCharacter", seed=31)}),
                    "client_id": client_id})
                assert status == 200
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY and message.data[:4] == b"\x00\x00\x00\x03":
                        node_length = int.from_bytes(message.data[4:8], "big")
                        texts.append(message.data[8 + node_length:].decode())
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(message.data)
                        if data["type"] == "progress" and data["data"].get("node") == "2":
                            progress.append(data["data"])
                        if data["type"] == "executing" and data["data"].get("node") is None \
                                and data["data"].get("prompt_id") == body["prompt_id"]:
                            return texts, progress
        return texts, progress

    texts, progress = asyncio.run(asyncio.wait_for(watch(), 60))
    assert any("in queue" in text for text in texts) and any("running" in text for text in texts)
    assert any("Loading InstantCharacter" in text for text in texts)          # fal's own log lines
    assert any(text.startswith("fal InstantCharacter: 1 image(s), job ") for text in texts)
    assert [(p["value"], p["max"]) for p in progress][-1] == (4, 4)


def test_no_key_reaches_any_channel(comfyui, emulator_servers, reference_name, tmp_path):
    """Run every cloud node (and failures that echo keys back) while a websocket listens; then search
    workflow JSON, PNG metadata, /history, /queue, /object_info, the log and every message for the keys."""
    import asyncio

    import aiohttp

    from cloud_helpers import TEST_KEYS

    for emulator in emulator_servers.values():
        emulator.reset()
    secrets = set(TEST_KEYS.values()) | set(TEST_KEYS["FAL_KEY"].split(":"))
    workflow = {"nodes": [{"type": "CharIDFalInstantCharacter", "widgets_values": ["a knight"]}]}
    emulator_servers["wavespeed"].faults.add("submit", "status", status=401,
                                             body={"code": 401, "message": f"bad key {TEST_KEYS['WAVESPEED_API_KEY']}"})
    emulator_servers["fal"].faults.add("stream", "status", status=403,
                                       body={"detail": f"key {TEST_KEYS['FAL_KEY']} revoked"})
    # an HTTP 200 envelope carrying an error code and the key, and a failed job's text with the key
    emulator_servers["wavespeed"].faults.add("poll", "status", status=200, body={
        "code": 401, "message": f"token {TEST_KEYS['WAVESPEED_API_KEY']} expired", "data": None})
    emulator_servers["segmind"].faults.add("job", "failed", body=f"bad header x-api-key={TEST_KEYS['SEGMIND_API_KEY']}")
    prompts = [
        graph(reference_name, {"2": cloud_node("CharIDWaveSpeedInstantCharacter", seed=11)}),   # 401 echoing the key
        graph(reference_name, {"2": cloud_node("CharIDFalInstantCharacter", seed=12)}),          # 403 echoing the key
        graph(reference_name, {"2": cloud_node("CharIDWaveSpeedInstantCharacter", seed=16)}),   # 200 envelope, key
        graph(reference_name, {"2": cloud_node("CharIDSegmindInstantID", seed=17)}),            # failed job, key
        graph(reference_name, {"2": cloud_node("CharIDWaveSpeedInstantCharacter", seed=13),
                               "3": cloud_node("CharIDFalInstantCharacter", seed=14),
                               "4": cloud_node("CharIDSegmindInstantID", seed=15)}),
    ]

    async def run_all() -> list[bytes]:
        frames: list[bytes] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{comfyui.url}/ws?clientId=leakscan") as ws:
                for prompt in prompts:
                    status, body = await asyncio.to_thread(comfyui.post_json, "/prompt", {
                        "prompt": prompt, "client_id": "leakscan", "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
                    assert status == 200, body
                    async for message in ws:
                        frames.append(message.data if isinstance(message.data, bytes) else message.data.encode())
                        if message.type == aiohttp.WSMsgType.TEXT:
                            data = json.loads(message.data)
                            if data["type"] == "executing" and data["data"].get("node") is None \
                                    and data["data"].get("prompt_id") == body["prompt_id"]:
                                break
        return frames

    frames = asyncio.run(asyncio.wait_for(run_all(), 120))
    history = comfyui.get_json("/history")
    entries = list(history.values())[-5:]
    assert [entry["status"]["status_str"] for entry in entries] == ["error", "error", "error", "error", "success"]
    assert "bad key ***" in error_message(entries[0]) and "key *** revoked" in error_message(entries[1])
    assert "(provider code 401): token *** expired" in error_message(entries[2])
    assert "x-api-key=***" in error_message(entries[3])

    pngs = []
    for entry in entries:
        for output in entry["outputs"].values():
            for image in output.get("images", []):
                data = comfyui.output_bytes(image)
                pngs.append(data)
                chunks = Image.open(io.BytesIO(data)).text
                assert "prompt" in chunks and "workflow" in chunks      # metadata is there, keys are not
    assert len(pngs) == 3
    channels = {
        "websocket": b"\n".join(frames),
        "history": json.dumps(history).encode(),
        "queue": json.dumps(comfyui.get_json("/queue")).encode(),
        "object_info": json.dumps(comfyui.get_json("/object_info")).encode(),
        "server log": comfyui.log_text().encode(),
        "png metadata": b"\n".join(pngs),
        "prompts sent": json.dumps(prompts).encode(),
    }
    for name, content in channels.items():
        for secret in secrets:
            assert secret.encode() not in content, f"a key leaked into {name}"
