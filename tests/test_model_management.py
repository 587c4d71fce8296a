"""The local pipelines' device host over ComfyUI's real model management (comfy.model_management of
the ComfyUI the tests install), driven in a separate Python so its global state stays out of the
test process: the parts become ComfyUI loaded models, unloading takes them off, and a ComfyUI whose
model management refuses them still gets its images (a warning says what no longer applies), the
room asked before an offloaded phase includes ComfyUI's own inference margin, and every pipeline
of the process meets one queue per device."""
from __future__ import annotations

import json
import subprocess
import sys

from comfyui_server import REPO_ROOT, comfyui_dir

# the pack's nodes/model_management.py as ComfyUI imports it (inside the pack's package), without
# running nodes/__init__.py (which registers every node)
IMPORT_HOST = r"""
import importlib, sys, types
sys.path.append(sys.argv[1])
for name, folder in (("charid", sys.argv[2]), ("charid.nodes", sys.argv[2] + "/nodes")):
    package = types.ModuleType(name)
    package.__path__ = [folder]
    sys.modules[name] = package
"""

SCRIPT = IMPORT_HOST + r"""
import json, logging
import comfy.cli_args
comfy.cli_args.args.cpu = True                     # as ComfyUI started with --cpu on this machine
import comfy.model_management as mm
import torch

module = importlib.import_module("charid.nodes.model_management")

warnings = []
logging.getLogger("character_identity").addHandler(
    type("H", (logging.Handler,), {"emit": lambda self, record: warnings.append(record.getMessage())})())

def ours(host):
    return [m.model for m in mm.current_loaded_models if m.model in host.patchers.values()]

text, denoiser = torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 4))
host = module.ComfyModelManagement(module.InstantCharacterWeights)
device = mm.get_torch_device()
host.keep_resident([text], device)
host.keep_resident([denoiser], device)
host.keep_resident([denoiser], device)             # already loaded: the same model, not a new one
report = {"device": str(device), "loaded": len(ours(host)), "patchers": len(host.patchers),
          "holders": sorted({type(p.model).__name__ for p in ours(host)}),
          "sizes": sorted(p.model_size() for p in ours(host))}
mm.unload_all_models()
report["after_unload"] = len(ours(host))
host.keep_resident([denoiser], device)
report["after_next_phase"] = len(ours(host))

refused = module.ComfyModelManagement(module.InstantIDWeights)
calls = []
def incompatible(*args, **kwargs):
    calls.append(1)
    raise TypeError("load_models_gpu() got an unexpected keyword argument 'force_full_load'")
mm.load_models_gpu = incompatible
refused.keep_resident([text], device)
refused.keep_resident([denoiser], device)
report.update(refused_calls=len(calls), unmanaged=refused.unmanaged, warnings=warnings,
              on_device=all(p.device == device for p in [*text.parameters(), *denoiser.parameters()]))
print("REPORT " + json.dumps(report))
"""


def run_host_script(script: str = SCRIPT) -> dict:
    result = subprocess.run([sys.executable, "-c", script, str(comfyui_dir() / "ComfyUI"), str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_each_phase_is_a_comfyui_model_that_unloading_takes_off_and_the_next_phase_brings_back():
    report = run_host_script()
    assert report["device"] == "cpu"
    assert report["loaded"] == 2 and report["patchers"] == 2
    assert report["holders"] == ["InstantCharacterWeights"]
    assert report["sizes"] == [(4 * 4 + 4) * 4, (4 * 8 + 8 + 8 * 4 + 4) * 4]      # each phase's own bytes
    assert report["after_unload"] == 0                  # "Unload models"
    assert report["after_next_phase"] == 1              # the denoiser again, the text encoders not


def test_a_comfyui_that_refuses_the_weights_still_runs_and_says_so_once():
    report = run_host_script()
    assert report["unmanaged"] and report["on_device"]
    assert report["refused_calls"] == 1                 # asked once, then the pipeline holds its weights
    [warning] = report["warnings"]
    assert "did not take the InstantIDWeights weights" in warning and "force_full_load" in warning
    assert "'Unload models' will not free them" in warning


MARGIN_SCRIPT = IMPORT_HOST + r"""
import json
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.reserve_vram = 2.0             # a user's --reserve-vram 2, read as ComfyUI reads it
import comfy.model_management as mm
import torch

module = importlib.import_module("charid.nodes.model_management")
asked = []
mm.free_memory = lambda memory_required, device, keep_loaded=[]: asked.append((memory_required, str(device)))
host = module.ComfyModelManagement(module.InstantCharacterWeights)
weights = 3 * 1024**3
host.make_room(weights, torch.device("cuda", 0))   # an offloaded phase about to move 3 GiB in (the GPU faked)
host.make_room(weights, torch.device("cpu"))       # nothing to free on the CPU
report = {"asked": list(asked), "comfyui_margin": mm.minimum_inference_memory(), "reserved": mm.extra_reserved_memory()}
del mm.minimum_inference_memory                    # a ComfyUI without it: its 0.8 GiB floor + the reserve
host.make_room(weights, torch.device("cuda", 0))
report["without_minimum"] = asked[-1][0]

other = module.ComfyModelManagement(module.InstantIDWeights)
if hasattr(host, "device_queue"):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    report["one_queue_per_device"] = host.device_queue(cpu) is other.device_queue(cpu) and \
        host.device_queue(gpu) is other.device_queue(gpu)
    report["devices_apart"] = host.device_queue(gpu) is not host.device_queue(torch.device("cuda", 1))
print("REPORT " + json.dumps(report))
"""


def test_the_room_asked_of_comfyui_includes_its_inference_margin():
    """Weight bytes alone would leave no room for the activations: ComfyUI adds its
    minimum_inference_memory() (0.8 GiB + the --reserve-vram reserve) to every load of its own."""
    report = run_host_script(MARGIN_SCRIPT)
    weights, gib = 3 * 1024**3, 1024**3
    assert report["reserved"] == 2 * gib and report["comfyui_margin"] == 0.8 * gib + 2 * gib
    assert report["asked"] == [[weights + int(report["comfyui_margin"]), "cuda:0"]]
    assert report["without_minimum"] == weights + int(0.8 * gib) + 2 * gib


def test_every_pipeline_meets_one_queue_per_device():
    report = run_host_script(MARGIN_SCRIPT)
    assert report.get("one_queue_per_device") and report.get("devices_apart")


CANCEL_SCRIPT = IMPORT_HOST + r"""
import asyncio, json, threading, time
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.model_management as mm
import comfy.utils
import torch
# no ComfyUI server runs in this process: progress texts go nowhere
sys.modules["server"] = types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=None))
# the first thing ComfyUI's progress hook (main.py, hijack_progress) does at each step of any node
comfy.utils.set_progress_bar_global_hook(
    lambda value, total, preview, prompt_id=None, node_id=None: mm.throw_exception_if_processing_interrupted())

runtime = importlib.import_module("charid.nodes.runtime")
from charid.pipelines.contract import GenerationInterrupted
from charid.pipelines.local.device_queue import DeviceQueue, run_on_device

queue = DeviceQueue("cpu")
holding = queue.join("node 2, InstantCharacter (local)")
assert holding.try_take()
holder, waiter = runtime.ComfyRunContext("2"), runtime.ComfyRunContext("3")
ran = []

def the_holders_next_step():
    time.sleep(0.3)
    mm.interrupt_current_processing(True)          # POST /interrupt
    holder.report_progress(1, 30)                  # its step's hook raises, and clears ComfyUI's flag
    holding.finish()                               # it stops and gives the device back at once

async def wait_for_the_device():
    threading.Thread(target=the_holders_next_step).start()
    try:
        await run_on_device(queue, torch.device("cpu"), "InstantID (local)", waiter, lambda: ran.append(1),
                            threading.Event())
        return "took the device"
    except GenerationInterrupted as exc:
        return str(exc)

outcome = asyncio.run(wait_for_the_device())
print("REPORT " + json.dumps({"outcome": outcome, "work_ran": bool(ran), "holder_saw_cancel": holder.interrupted(),
                              "flag": mm.processing_interrupted()}))
"""


def test_a_cancel_one_node_consumed_still_reaches_the_node_waiting_for_the_device():
    """ComfyUI's progress hook clears the interrupt flag as it raises for the node whose step it is;
    the node waiting for the device must still see the Cancel when that node gives the device back."""
    report = run_host_script(CANCEL_SCRIPT)
    assert report["holder_saw_cancel"] and report["flag"]
    assert report["outcome"] == "InstantID (local): cancelled while waiting for the CPU"
    assert not report["work_ran"]


DYNAMIC_SCRIPT = IMPORT_HOST + r"""
import inspect, json
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.model_management as mm
import torch

module = importlib.import_module("charid.nodes.model_management")
host = module.ComfyModelManagement(module.InstantCharacterWeights)
device = mm.get_torch_device()
host.keep_resident([torch.nn.Linear(4, 4)], device)
host.keep_resident([torch.nn.Linear(4, 8)], device)
ours = lambda: [m for m in mm.current_loaded_models if m.model in host.patchers.values()]
dynamic_aware = "for_dynamic" in inspect.signature(mm.free_memory).parameters
report = {"loaded": len(ours()), "dynamic_aware": dynamic_aware,
          "dynamic": [bool(getattr(p, "is_dynamic", lambda: False)()) for p in host.patchers.values()]}
# the room ComfyUI makes before loading its own models: with dynamic VRAM (0.33 on a GPU) it passes
# for_dynamic=True, which leaves other dynamic models to be paged on demand and unloads the rest
mm.free_memory(1e30, device, **({"for_dynamic": True} if dynamic_aware else {}))
report["after_dynamic_free"] = len(ours())
print("REPORT " + json.dumps(report))
"""


def test_comfyuis_dynamic_vram_loads_still_unload_the_pack_models():
    """ComfyUI 0.33 pages its own models in and out on demand ("dynamic VRAM", ModelPatcherDynamic on
    GPUs) and, making room for one, never unloads another dynamic model. The pack's parts are ordinary
    ModelPatchers (plain torch layers, not ComfyUI's cast ops, which dynamic loading needs): ComfyUI
    counts them as loaded models and unloads them whole when its own models need the room."""
    report = run_host_script(DYNAMIC_SCRIPT)
    assert report["loaded"] == 2 and report["dynamic"] == [False, False]
    assert report["after_dynamic_free"] == 0
