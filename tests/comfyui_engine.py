"""ComfyUI's own execution engine (execution.PromptExecutor of the ComfyUI the tests install) running
prompts in a separate Python, with the pack loaded the way ComfyUI loads a custom node and one thing
faked at the process boundary: the GPU. `comfy.model_management` reports a CUDA device whose free
memory follows a script (one reading per call), so a test can make free VRAM drop between two
decisions. No HTTP server: a stub collects what the engine would send to the browser, in order."""
from __future__ import annotations

import json
import subprocess
import sys

from comfyui_server import PACK_NAME, REPO_ROOT, comfyui_dir

# Script text shared by the tests that run ComfyUI's executor in a subprocess (after `import server,
# nodes` with comfy_root, pack_root and pack_name set): a stand-in for the PromptServer that records what
# the engine would send to the browser, and the pack loaded as ComfyUI loads a custom node (with the
# comfy_extras nodes the tests' prompts use).
ENGINE_SERVER_AND_PACK = r"""
class Server:
    client_id = None
    last_node_id = None
    sockets_metadata = {}
    def __init__(self):
        self.events = []
    def send_sync(self, event, data, sid=None):
        self.events.append([event, data])
    def send_progress_text(self, text, node, sid=None):
        self.events.append(["progress_text", {"node": node, "text": text}])

folder = tempfile.mkdtemp()
os.symlink(pack_root, os.path.join(folder, pack_name))
async def load():
    for extra in ("nodes_primitive.py", "nodes_preview_any.py"):
        assert await nodes.load_custom_node(os.path.join(comfy_root, "comfy_extras", extra), module_parent="comfy_extras")
    assert await nodes.load_custom_node(os.path.join(folder, pack_name))
asyncio.run(load())
"""

SCRIPT = r"""
import asyncio, collections, copy, json, os, sys, tempfile
comfy_root, pack_root, pack_name = sys.argv[1:4]
cases = json.loads(sys.stdin.read())
sys.path.insert(0, comfy_root)
os.chdir(comfy_root)
import utils.extra_config              # before nodes.py puts comfy/ on the path, as main.py does
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch
import comfy.model_management as mm
import server
import nodes, execution

readings = []
def free_memory(device=None, torch_free_too=False):
    script = current["free_vram_gb"]
    gb = script[min(len(readings), len(script) - 1)]
    readings.append(gb)
    return (gb * 2**30, gb * 2**30) if torch_free_too else gb * 2**30
mm.get_torch_device = lambda: torch.device("cuda", 0)        # the fake GPU
mm.get_free_memory = free_memory

""" + ENGINE_SERVER_AND_PACK + r"""

reports = []
for current in cases:
    readings.clear()
    executor = None
    for run in range(current.get("runs", 1)):      # queued again: the same executor and its cache
        taken = len(readings)
        stub = server.PromptServer.instance = Server()      # after loading: no HTTP routes to register
        prompt = copy.deepcopy(current["prompt"])          # a queued prompt is a new object each time
        valid = asyncio.run(execution.validate_prompt("prompt", prompt, None))
        assert valid[0], valid
        # ComfyUI's classic cache (its default before RAM pressure); cache_args grew keys over versions
        executor = executor or execution.PromptExecutor(stub, cache_type=execution.CacheType.CLASSIC,
                                                        cache_args=collections.defaultdict(float))
        executor.server = stub
        executor.execute(prompt, f"prompt-{run}", {"client_id": "engine"}, valid[2])
        reports.append({"events": stub.events, "readings": readings[taken:], "success": executor.success,
                        "outputs": executor.history_result["outputs"]})
print("REPORT " + json.dumps(reports, default=str))
"""


def run_prompts(cases: list[dict]) -> list[dict]:
    """Each case: {"prompt": API prompt, "free_vram_gb": [reading 1, reading 2, …] (the last repeats),
    "runs": how often it is queued (default 1)}. Returns per run: the events in order, the readings
    taken, success, and the output nodes' ui."""
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(comfyui_dir() / "ComfyUI"), str(REPO_ROOT), PACK_NAME],
                            input=json.dumps(cases), capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


def executed(report: dict) -> list[str]:
    return [data["node"] for event, data in report["events"] if event == "executing" and data.get("node")]
