"""The local pipelines' device host over ComfyUI's real model management (comfy.model_management of
the ComfyUI the tests install), driven in a separate Python so its global state stays out of the
test process: the parts become ComfyUI loaded models, unloading takes them off, and a ComfyUI whose
model management refuses them still gets its images (a warning says what no longer applies)."""
from __future__ import annotations

import json
import subprocess
import sys

from comfyui_server import REPO_ROOT, comfyui_dir

SCRIPT = r"""
import importlib.util, json, logging, sys
sys.path.append(sys.argv[1])
import comfy.cli_args
comfy.cli_args.args.cpu = True                     # as ComfyUI started with --cpu on this machine
import comfy.model_management as mm
import torch

spec = importlib.util.spec_from_file_location("charid_model_management", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

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


def run_host_script() -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(comfyui_dir() / "ComfyUI"),
                             str(REPO_ROOT / "nodes" / "model_management.py")],
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
