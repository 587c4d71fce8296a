"""A real, unmodified ComfyUI server with this pack linked in, driven over its HTTP API (stdlib only).

The ComfyUI install comes from scripts/setup.sh (COMFYUI_DIR, default <repo>/.comfyui). Each
server gets its own base directory (custom_nodes/, input/, output/, temp/, user/) so the
ComfyUI tree stays untouched and tests never see each other's files.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-character-identity"
PACK_MODULE = f"custom_nodes.{PACK_NAME}"
ARTIFACTS = REPO_ROOT / "test-artifacts"
# ComfyUI since 2026-05 ("Add colored logs") starts every log line with a coloured level tag,
# "\x1b[32m[INFO]\x1b[0m " (also when its output is a file); 0.3.75 printed the bare message.
LOG_LEVEL_TAG = re.compile(r"^(?:\x1b\[[0-9;]*m)*\[(?:DEBUG|DETAIL|INFO|WARNING|ERROR|CRITICAL)\](?:\x1b\[0m)? ", re.M)
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR", REPO_ROOT / ".comfyui")).resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyUIServer:
    def __init__(self, base: Path, env: dict[str, str] | None = None, extra_args: list[str] | None = None):
        self.base = base
        self.env = env or {}
        self.extra_args = extra_args or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.process: subprocess.Popen | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> "ComfyUIServer":
        comfy = comfyui_dir()
        python = comfy / "venv/bin/python"
        if not python.exists() or not (comfy / "ComfyUI/main.py").exists():
            raise RuntimeError(f"no ComfyUI install in {comfy}; run scripts/setup.sh --test first")
        for folder in ("custom_nodes", "input", "output", "temp", "user"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        env = {**os.environ, **self.env}
        command = [
            str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
            "--disable-api-nodes", "--disable-auto-launch", *self.extra_args,
        ]
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=comfy / "ComfyUI", stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get_json("/system_stats")
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("ComfyUI did not start:\n" + self.log_text()[-4000:])
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        """The server's log as the messages ComfyUI printed: level tags and colours removed, so the
        same text reads the same on every ComfyUI version (the file on disk keeps them)."""
        raw = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return ANSI_STYLE.sub("", LOG_LEVEL_TAG.sub("", raw))

    def keep_log(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        target = ARTIFACTS / name
        shutil.copyfile(self.log_path, target)
        return target

    # ---- HTTP ------------------------------------------------------------------------------

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method=method)
        return urllib.request.urlopen(request, timeout=30)

    def get_json(self, path: str):
        with self.request(path) as response:
            return json.load(response)

    def post_json(self, path: str, payload) -> tuple[int, dict]:
        """POST JSON; returns (status, body) for 2xx and 4xx alike."""
        body = json.dumps(payload).encode()
        try:
            with self.request(path, body, {"Content-Type": "application/json"}) as response:
                text = response.read()
                return response.status, (json.loads(text) if text.strip() else {})
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, {"raw": text.decode(errors="replace")}

    def queue_prompt(self, prompt: dict, extra_data: dict | None = None) -> str:
        status, body = self.post_json("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex,
                                                  **({"extra_data": extra_data} if extra_data else {})})
        if status != 200:
            raise AssertionError(f"/prompt refused the prompt ({status}): {json.dumps(body)[:3000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Poll /history until the prompt finished (success or error); return its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and (entry["status"]["completed"] or entry["status"]["status_str"] == "error"):
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        return self.wait(self.queue_prompt(prompt), timeout)

    def unload_models(self, last_prompt: dict) -> None:
        """"Unload models" as the button does (POST /free), then `last_prompt` again — the prompt that just
        ran, so every node is cached and nothing executes. ComfyUI's prompt worker applies the flag when it
        next wakes: before that rerun, or right after it and before taking another prompt. So whatever is
        queued next runs on unloaded models however slow the machine (a fixed sleep is a race: a flag set
        while the worker finishes a prompt waits for its next wake-up), and ComfyUI's cache is what a user's
        would be (a different prompt in between would drop the cached loaders)."""
        status, body = self.post_json("/free", {"unload_models": True})
        assert status == 200, body
        entry = self.run(last_prompt)
        assert entry["status"]["status_str"] == "success", entry["status"]

    def cancel_at_progress(self, prompt: dict, node: str, at: int = 2, timeout: float = 400):
        """Queue `prompt` watching the websocket; press Cancel (POST /interrupt) when `node` reports
        progress `at`. → (how the prompt ended, the progress values seen, seconds from Cancel to the end)."""
        import aiohttp

        async def watch():
            progress, client_id = [], f"cancel-watch-{node}"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
                    status, body = await asyncio.to_thread(self.post_json, "/prompt",
                                                           {"prompt": prompt, "client_id": client_id})
                    assert status == 200, body
                    cancelled_at = None
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        data = json.loads(message.data)
                        if data["type"] == "progress" and data["data"].get("node") == node:
                            progress.append(data["data"]["value"])
                            if data["data"]["value"] == at and cancelled_at is None:
                                cancelled_at = time.monotonic()       # before the POST: its answer may wait
                                await asyncio.to_thread(self.post_json, "/interrupt", {})
                        if data["type"] in ("execution_interrupted", "execution_success", "execution_error") and \
                                data["data"].get("prompt_id") == body["prompt_id"]:
                            return data["type"], progress, time.monotonic() - (cancelled_at or time.monotonic())
            return None, progress, None

        return asyncio.run(asyncio.wait_for(watch(), timeout))

    def upload_image(self, data: bytes, name: str) -> str:
        """POST /upload/image (multipart), as the LoadImage widget does; returns the stored name."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
            f"--{boundary}--\r\n".encode(),
        ]
        with self.request("/upload/image", b"".join(parts),
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"}) as response:
            return json.load(response)["name"]

    def loaded_image_png(self, name: str) -> bytes:
        """The pixels ComfyUI's LoadImage gives for an input file, as a lossless PNG (LoadImage → SaveImage).
        Oracles compare with these, not with Pillow's decoding: since 2026-04 LoadImage decodes with
        PyAV, and a JPEG's pixels then differ from Pillow's by up to 78 levels."""
        prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
                  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded/input"}}}
        entry = self.run(prompt)
        if entry["status"]["status_str"] != "success":
            raise AssertionError(f"LoadImage failed on {name}: {entry['status']}")
        [image] = entry["outputs"]["2"]["images"]
        return self.output_bytes(image)

    def output_bytes(self, image: dict) -> bytes:
        """An output listed in /history, fetched over HTTP the way the frontend does (/view)."""
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with self.request(f"/view?{query}") as response:
            return response.read()


def error_message(entry: dict) -> str:
    """The execution_error text of a failed prompt's history entry."""
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data["exception_message"]
    raise AssertionError(f"no execution_error in {entry['status']}")


def socket_layout(info: dict, node: str) -> list[tuple[str, str]]:
    """A node's inputs in the order the UI shows them, as (name, type) — "COMBO" for a list of options."""
    order = info[node]["input_order"]
    spec = {**info[node]["input"]["required"], **info[node]["input"].get("optional", {})}
    return [(name, spec[name][0] if isinstance(spec[name][0], str) else "COMBO")
            for name in order["required"] + order.get("optional", [])]
