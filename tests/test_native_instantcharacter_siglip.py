"""Load InstantCharacter Image Encoders with the single-file SigLIP many FLUX users have for Redux
(`sigclip_vision_patch14_384.safetensors`, models/clip_vision): the file's layout is the one ComfyUI's
own CLIPVisionLoader reads (checked against ComfyUI's module), its features equal the Hugging Face
folder's for the same weights, and any other clip_vision file is refused by name at queue time.

The tiny SigLIP here is 144 wide (two of SigLIP so400m's 72-wide heads: the head count is the one
size such a file does not carry) with the 27 layers InstantCharacter reads, 384 px, patch 14.
"""
from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import types

import pytest
import torch

import instantcharacter_fidelity as cases
import instantcharacter_models as tiny
from comfyui_server import PACK_NAME, REPO_ROOT, comfyui_dir
from pipelines.local.instantcharacter import siglip_file

SIGLIP_144 = {"hidden_size": 144, "intermediate_size": 64, "num_hidden_layers": 27, "num_attention_heads": 2,
              "image_size": 384, "patch_size": 14}
TOLERANCE = 1e-5


def comfy_layout(state: dict) -> dict:
    """A Hugging Face vision model's tensors as ComfyUI's clip_vision files hold them: under
    `vision_model.` (transformers 5 names them without it), projections at the top level."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        top = key.startswith(("vision_model.", "visual_projection."))
        out[key if top else "vision_model." + key] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory):
    """A clip_vision folder as a user has it: the tiny SigLIP as a Hugging Face folder and as the
    Redux file (with and without the pooling head), a CLIP vision file, a DINOv2 single file, and the
    tiny DINOv2 folder."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig, SiglipVisionModel

    base = tmp_path_factory.mktemp("siglip-base")          # a ComfyUI base directory
    clip_vision = base / "models" / "clip_vision"
    siglip = tiny.fill(SiglipVisionModel(SiglipVisionConfig(**SIGLIP_144)))
    folder = clip_vision / "google" / "siglip-144"
    siglip.save_pretrained(folder)
    shutil.copy(tiny.CONFIGS / "siglip_preprocessor.json", folder / "preprocessor_config.json")
    layout = comfy_layout(siglip.state_dict())
    save_file(layout, clip_vision / "sigclip_vision_patch14_384.safetensors")
    save_file({k: v for k, v in layout.items() if ".head." not in k}, clip_vision / "sigclip-no-head.safetensors")
    clip = tiny.fill(CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=224,
        patch_size=14, projection_dim=32)))
    save_file(comfy_layout(clip.state_dict()), clip_vision / "clip_vision_l.safetensors")
    dinov2 = tiny.dinov2()
    save_file({k: v.contiguous() for k, v in dinov2.state_dict().items()}, clip_vision / "dinov2-single.safetensors")
    dinov2_folder = clip_vision / "facebook" / "dinov2-tiny"
    dinov2.save_pretrained(dinov2_folder)
    shutil.copy(tiny.CONFIGS / "dinov2_preprocessor.json", dinov2_folder / "preprocessor_config.json")
    return types.SimpleNamespace(base=base, clip_vision=clip_vision, folder=folder, file=clip_vision / "sigclip_vision_patch14_384.safetensors",
                                 no_head=clip_vision / "sigclip-no-head.safetensors",
                                 clip=clip_vision / "clip_vision_l.safetensors",
                                 dinov2_file=clip_vision / "dinov2-single.safetensors", dinov2_folder=dinov2_folder)


@pytest.fixture(scope="module")
def native():
    """nodes/native_instantcharacter.py imported as ComfyUI imports the pack (see test_native_instantcharacter)."""
    path = str(comfyui_dir() / "ComfyUI")
    if path not in sys.path:
        sys.path.append(path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    for name, folder in (("charid_native_test", REPO_ROOT), ("charid_native_test.nodes", REPO_ROOT / "nodes")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module("charid_native_test.nodes.native_instantcharacter")


def test_the_file_layout_is_the_one_comfyuis_clip_vision_loader_reads(native, encoder_files):
    """ComfyUI's own SigLIP-384 module (its clip_vision_siglip_384.json, built on the meta device) has
    exactly the file's tensor names, less the pooling head ComfyUI does not build."""
    import comfy.clip_model
    import comfy.ops
    from safetensors import safe_open

    config = json.loads((comfyui_dir() / "ComfyUI" / "comfy" / "clip_vision_siglip_384.json").read_text())
    with torch.device("meta"):
        module = comfy.clip_model.CLIPVisionModelProjection(config, torch.float32, "meta", comfy.ops.manual_cast)
    with safe_open(str(encoder_files.file), "pt") as handle:
        names = set(handle.keys())
    assert set(module.state_dict()) == {k for k in names if ".head." not in k}
    assert {k for k in names if ".head." in k}        # the tiny file carries the head, as a full export does


@pytest.mark.parametrize("which", ["file", "no_head"])
def test_features_from_the_single_file_equal_the_folders(native, encoder_files, which, record_property):
    cpu = torch.device("cpu")
    image = cases.reference_image()
    from_folder = native.load_encoders(str(encoder_files.folder), str(encoder_files.dinov2_folder), torch.float32)
    from_file = native.load_encoders(str(getattr(encoder_files, which)), str(encoder_files.dinov2_folder), torch.float32)
    expected, got = from_folder.features(image, cpu), from_file.features(image, cpu)
    difference = max((getattr(got, part) - getattr(expected, part)).abs().max().item()
                     for part in ("low_res_shallow", "low_res_deep", "high_res_deep"))
    record_property("max_difference", difference)
    print(f"\n{which}: |file - folder| features = {difference:.3g}")
    assert expected.low_res_deep.shape[-1] == SIGLIP_144["hidden_size"] + tiny.DINOV2["hidden_size"]
    assert difference < TOLERANCE


def test_sizes_are_read_from_the_weights_and_other_files_named(tmp_path, encoder_files):
    from pipelines.local import model_kinds as kinds

    config = siglip_file.config_from_header(kinds.read_header(encoder_files.file))
    assert config == {**{k: v for k, v in SIGLIP_144.items()}, "num_channels": 3, "vision_use_head": True}
    assert "is a CLIP vision model (2 layers, width 32), not SigLIP" in siglip_file.file_problem(encoder_files.clip)
    assert "is a DINOv2 model (single file), not SigLIP" in siglip_file.file_problem(encoder_files.dinov2_file)
    # SigLIP at 512 px (ComfyUI's clip_vision_siglip_512): 1024 positions, refused, not interpolated
    from safetensors.torch import load_file, save_file

    state = load_file(str(encoder_files.file))
    state["vision_model.embeddings.position_embedding.weight"] = torch.zeros(1024, SIGLIP_144["hidden_size"])
    save_file(state, tmp_path / "siglip-512.safetensors")
    assert "SigLIP for another resolution (1024 positions)" in siglip_file.file_problem(tmp_path / "siglip-512.safetensors")


# ---- the node in ComfyUI's own validation and execution (a separate Python) --------------------------------

ENGINE = r"""
import asyncio, json, os, sys, tempfile
comfy_root, pack_root, pack_name, base, out = sys.argv[1:6]
sys.path.insert(0, comfy_root)
os.chdir(comfy_root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = base
import utils.extra_config
import server
import nodes, execution
import torch

class KeepFeatures:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image_encoders": ("CHARID_INSTANTCHARACTER_ENCODERS",), "image": ("IMAGE",),
                             "name": ("STRING", {"default": "x"})}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "keep"
    CATEGORY = "test"
    def keep(self, image_encoders, image, name):
        from PIL import Image
        import numpy as np
        pil = Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))
        features = image_encoders.features(pil, torch.device("cpu"))
        torch.save({k: getattr(features, k) for k in ("low_res_shallow", "low_res_deep", "high_res_deep")},
                   os.path.join(out, name + ".pt"))
        return {}

class Server:
    client_id = None
    last_node_id = None
    sockets_metadata = {}
    def __init__(self):
        self.events = []
    def send_sync(self, event, data, sid=None):
        self.events.append([event, data])
    def send_progress_text(self, text, node, sid=None):
        pass

folder = tempfile.mkdtemp()
os.symlink(pack_root, os.path.join(folder, pack_name))
asyncio.run(nodes.load_custom_node(os.path.join(folder, pack_name)))
nodes.NODE_CLASS_MAPPINGS["TestKeepFeatures"] = KeepFeatures
reports = []
for case in json.loads(sys.stdin.read()):
    valid = asyncio.run(execution.validate_prompt("prompt", case["prompt"], None))
    report = {"valid": valid[0], "node_errors": valid[3]}
    if valid[0]:
        stub = server.PromptServer.instance = Server()
        executor = execution.PromptExecutor(stub, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        executor.execute(case["prompt"], "prompt", {"client_id": "test"}, valid[2])
        report["errors"] = [data.get("exception_message") for event, data in stub.events if event == "execution_error"]
    reports.append(report)
print("REPORT " + json.dumps(reports, default=str))
"""


def encoders_prompt(siglip: str, keep: str) -> dict:
    return {
        "1": {"class_type": "CharIDLoadInstantCharacterEncoders",
              "inputs": {"siglip": siglip, "dinov2": "facebook/dinov2-tiny", "dtype": "fp32"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},
        "3": {"class_type": "TestKeepFeatures", "inputs": {"image_encoders": ["1", 0], "image": ["2", 0], "name": keep}},
    }


@pytest.fixture(scope="module")
def engine_run(encoder_files, tmp_path_factory):
    base = encoder_files.base
    (base / "input").mkdir(exist_ok=True)
    cases.reference_image().save(base / "input" / "reference.png")
    out = tmp_path_factory.mktemp("siglip-out")
    prompts = [encoders_prompt("sigclip_vision_patch14_384.safetensors", "file"),
               encoders_prompt("google/siglip-144", "folder"),
               encoders_prompt("clip_vision_l.safetensors", "clip"),
               encoders_prompt("dinov2-single.safetensors", "dinov2")]
    result = subprocess.run([str(comfyui_dir() / "venv" / "bin" / "python"), "-c", ENGINE, str(comfyui_dir() / "ComfyUI"),
                             str(REPO_ROOT), PACK_NAME, str(base), str(out)],
                            input=json.dumps([{"prompt": p} for p in prompts]), capture_output=True, text=True,
                            timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):]), {path.stem: torch.load(path) for path in out.glob("*.pt")}


def test_the_node_gives_the_folders_features_from_the_file(engine_run):
    reports, features = engine_run
    for report in reports[:2]:
        assert report["valid"] and not report["errors"], report
    difference = max((features["file"][k] - features["folder"][k]).abs().max().item() for k in features["folder"])
    print(f"\nthrough ComfyUI's executor: |file - folder| features = {difference:.3g}")
    assert difference < TOLERANCE


def test_other_clip_vision_files_are_refused_by_name_at_queue_time(engine_run):
    reports, features = engine_run
    for report, name, what in ((reports[2], "clip_vision_l.safetensors", "a CLIP vision model (2 layers, width 32)"),
                               (reports[3], "dinov2-single.safetensors", "a DINOv2 model (single file)")):
        assert not report["valid"]
        text = json.dumps(report["node_errors"])
        assert f"siglip: {name} is {what}, not SigLIP" in text, text
    assert "clip" not in features and "dinov2" not in features           # refused before anything loaded
