"""What a model file is, known from its header before any weight loads, and the loaders' file inputs
as ComfyUI's own validation and execution see them.

Real-size files are written as their headers only: a .safetensors header with the released shapes,
the data region left as a sparse hole (gigabytes on paper, nothing on disk). ComfyUI's engine runs
in a separate Python (its global state stays out of this process) with the pack loaded the way
ComfyUI loads a custom node, against model folders that hold the tiny test models."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import instantcharacter_models as tiny
from comfyui_engine import ENGINE_SERVER_AND_PACK
from comfyui_server import PACK_NAME, REPO_ROOT, comfyui_dir
from pipelines.local import model_kinds as kinds
from pipelines.local.instantcharacter.loading import FluxFiles, flux_problems
from pipelines.local.weights import ModelFileError, unscale_fp8

BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1}


def header_only(path: Path, shapes: dict[str, tuple], dtype: str = "BF16") -> Path:
    """A .safetensors file with these tensors at their real shapes: the header written, the data a
    sparse hole of the right length."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = BYTES[dtype]
        for n in shape:
            size *= n
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


# the released models' shapes, a few tensors each (what identify and the size checks read)
FLUX_DEV = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "double_blocks.0.img_attn.norm.query_norm.scale": (128,),
            "single_blocks.0.linear1.weight": (21504, 3072), "img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096),
            "vector_in.in_layer.weight": (3072, 768), "guidance_in.in_layer.weight": (3072, 256)}
FLUX_SCHNELL = {k: v for k, v in FLUX_DEV.items() if not k.startswith("guidance_in")}
FLUX_FILL = {**FLUX_DEV, "img_in.weight": (3072, 384)}
AE = {"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3), "decoder.conv_in.weight": (512, 16, 3, 3)}
SDXL_VAE = {"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}
CLIP_L = {"text_model.embeddings.token_embedding.weight": (49408, 768),
          "text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768)}
CLIP_G = {"text_model.embeddings.token_embedding.weight": (49408, 1280),
          "text_model.encoder.layers.0.self_attn.q_proj.weight": (1280, 1280)}
T5XXL = {"shared.weight": (32128, 4096), "encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096)}
UMT5 = {**T5XXL, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": (32, 64)}
SDXL = {"model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "conditioner.embedders.1.model.text_projection": (1280, 1280)}
SD15 = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)}
SD3 = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536)}
FLUX_LORA = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (16, 3072)}
ALL_IN_ONE = {**{"model.diffusion_model." + k: v for k, v in FLUX_DEV.items()}, **{"vae." + k: v for k, v in AE.items()},
              **{"text_encoders.clip_l.transformer." + k: v for k, v in CLIP_L.items()},
              **{"text_encoders.t5xxl.transformer." + k: v for k, v in T5XXL.items()}}
DIFFUSERS_FLUX = {"x_embedder.weight": (3072, 64), "context_embedder.weight": (3072, 4096),
                  "time_text_embed.text_embedder.linear_1.weight": (3072, 768),
                  "time_text_embed.guidance_embedder.linear_1.weight": (3072, 256),
                  "transformer_blocks.0.attn.to_q.weight": (3072, 3072), "single_transformer_blocks.0.proj_out.weight": (3072, 15360)}
NF4 = {**FLUX_DEV, "double_blocks.0.img_attn.qkv.weight.absmax": (442368,)}


@pytest.mark.parametrize(("shapes", "kind", "label"), [
    (FLUX_DEV, kinds.FLUX_BFL, "a FLUX.1-dev transformer"),
    (DIFFUSERS_FLUX, kinds.FLUX_DIFFUSERS, "a FLUX.1-dev transformer in diffusers layout"),
    (ALL_IN_ONE, kinds.FLUX_CHECKPOINT, "a FLUX all-in-one checkpoint"),
    (FLUX_SCHNELL, kinds.OTHER, "FLUX.1-schnell"),
    (NF4, kinds.OTHER, "bitsandbytes NF4"),
    (AE, kinds.VAE, "a VAE with 16 latent channels"),
    (CLIP_L, kinds.CLIP_TEXT, "a CLIP-L text encoder"),
    (CLIP_G, kinds.CLIP_TEXT, "CLIP-G"),
    (T5XXL, kinds.T5_ENCODER, "a T5-XXL text encoder"),
    (UMT5, kinds.OTHER, "a UMT5 text encoder"),
    (SDXL, kinds.SDXL_CHECKPOINT, "an SDXL checkpoint"),
    (SD15, kinds.OTHER, "a Stable Diffusion 1.x checkpoint"),
    (SD3, kinds.OTHER, "a Stable Diffusion 3 model"),
    (FLUX_LORA, kinds.OTHER, "a LoRA"),
])
def test_what_a_file_is_is_read_from_its_header_alone(tmp_path, monkeypatch, shapes, kind, label):
    """Gigabyte-sized files (sparse) are named at once, with every way of loading weights disabled."""
    import safetensors
    import safetensors.torch

    def no_weights(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(safetensors, "safe_open", no_weights)
    monkeypatch.setattr(safetensors.torch, "load_file", no_weights)
    monkeypatch.setattr(torch, "load", no_weights)
    path = header_only(tmp_path / "model.safetensors", shapes)
    found = kinds.identify(kinds.read_header(path))
    assert found.name == kind and label in found.label


def test_the_fp8_and_gguf_files_are_named_with_their_format(tmp_path):
    files = tiny.build_tiny_files(tmp_path / "tiny")
    single = files.transformer_file.parent
    labels = {name: kinds.identify(kinds.read_header(single / name)).label for name in (
        "flux1-dev-tiny-fp8_e4m3fn.safetensors", "flux1-dev-tiny-Q8_0.gguf", "t5xxl-tiny_fp8_e4m3fn_scaled.safetensors",
        "flux1-dev-tiny-allinone-fp8.safetensors")}
    assert labels == {"flux1-dev-tiny-fp8_e4m3fn.safetensors": "a FLUX.1-dev transformer (fp8)",
                      "flux1-dev-tiny-Q8_0.gguf": "a FLUX.1-dev transformer (GGUF Q8_0)",
                      "t5xxl-tiny_fp8_e4m3fn_scaled.safetensors": "a T5 text encoder (fp8 scaled)",
                      "flux1-dev-tiny-allinone-fp8.safetensors": "a FLUX all-in-one checkpoint (fp8)"}
    assert kinds.is_flux_checkpoint(files.checkpoint_file)
    assert not kinds.is_flux_checkpoint(files.transformer_file)


def _flux(tmp_path, **parts) -> FluxFiles:
    return FluxFiles(**{part: header_only(tmp_path / f"{name}.safetensors", shapes)
                        for part, (name, shapes) in parts.items()})


@pytest.mark.parametrize(("parts", "expected"), [
    (dict(transformer=("sd_xl_base_1.0", SDXL)),
     ("transformer", "sd_xl_base_1.0.safetensors is an SDXL checkpoint; InstantCharacter needs a FLUX.1-dev transformer")),
    (dict(transformer=("flux1-schnell", FLUX_SCHNELL)),
     ("transformer", "flux1-schnell.safetensors is FLUX.1-schnell (it has no guidance input")),
    (dict(transformer=("sd3.5_large", SD3)), ("transformer", "sd3.5_large.safetensors is a Stable Diffusion 3 model")),
    (dict(vae=("t5xxl_fp16", T5XXL)), ("vae", "t5xxl_fp16.safetensors is a T5-XXL text encoder; choose FLUX's VAE")),
    (dict(clip_l=("t5xxl_fp16", T5XXL)),
     ("clip_l", "t5xxl_fp16.safetensors is a T5-XXL text encoder; choose the CLIP-L text encoder (clip_l.safetensors)")),
    (dict(t5xxl=("clip_l", CLIP_L)),
     ("t5xxl", "clip_l.safetensors is a CLIP-L text encoder; choose the T5-XXL text encoder")),
    (dict(t5xxl=("umt5_xxl", UMT5)), ("t5xxl", "umt5_xxl.safetensors is a UMT5 text encoder (Wan's)")),
    (dict(vae=("style", FLUX_LORA)), ("vae", "style.safetensors is a LoRA; choose FLUX's VAE")),
])
def test_a_file_of_another_kind_is_refused_by_name_for_each_flux_part(tmp_path, parts, expected):
    full = {"transformer": ("flux1-dev", FLUX_DEV), "vae": ("ae", AE), "clip_l": ("clip_l", CLIP_L),
            "t5xxl": ("t5xxl_fp16", T5XXL), **parts}
    [(part, text)] = flux_problems(_flux(tmp_path, **full))
    assert part == expected[0] and expected[1] in text, text


@pytest.mark.parametrize(("parts", "expected"), [
    (dict(vae=("sdxl_vae", SDXL_VAE)),
     ("vae", "sdxl_vae.safetensors has 4 latent channels (a Stable Diffusion 1.x/2.x/SDXL VAE); this FLUX transformer "
             "takes 16 (FLUX's ae.safetensors)")),
    (dict(transformer=("flux1-fill-dev", FLUX_FILL)),
     ("transformer", "flux1-fill-dev.safetensors takes 384 input channels (FLUX.1-dev takes 64; 384 is a FLUX.1 Fill, "
                     "Canny or Depth model)")),
    (dict(clip_l=("clip_g", CLIP_G)),
     ("clip_l", "clip_g.safetensors is 1280 wide; this FLUX transformer takes CLIP-L's 768")),
])
def test_parts_whose_sizes_do_not_fit_together_are_named(tmp_path, parts, expected):
    full = {"transformer": ("flux1-dev", FLUX_DEV), "vae": ("ae", AE), "clip_l": ("clip_l", CLIP_L),
            "t5xxl": ("t5xxl_fp16", T5XXL), **parts}
    assert flux_problems(_flux(tmp_path, **full)) == [expected]


def test_the_released_files_and_the_all_in_one_checkpoint_pass(tmp_path):
    assert flux_problems(_flux(tmp_path, transformer=("flux1-dev", FLUX_DEV), vae=("ae", AE), clip_l=("clip_l", CLIP_L),
                               t5xxl=("t5xxl_fp16", T5XXL))) == []
    checkpoint = header_only(tmp_path / "flux1-dev-fp8.safetensors", ALL_IN_ONE, "F8_E4M3")
    assert flux_problems(FluxFiles(checkpoint=checkpoint)) == []
    # a part the checkpoint lacks is named; its own file fills the gap
    no_t5 = header_only(tmp_path / "flux1-dev-no-t5.safetensors",
                        {k: v for k, v in ALL_IN_ONE.items() if not k.startswith("text_encoders.t5xxl")})
    assert flux_problems(FluxFiles(checkpoint=no_t5)) == [
        ("t5xxl", "flux1-dev-no-t5.safetensors holds no T5-XXL text encoder; choose a t5xxl file")]
    t5 = header_only(tmp_path / "t5xxl_fp16.safetensors", T5XXL)
    assert flux_problems(FluxFiles(checkpoint=no_t5, t5xxl=t5)) == []


def test_a_truncated_or_foreign_file_says_so_before_any_weight_loads(tmp_path):
    whole = header_only(tmp_path / "whole.safetensors", FLUX_DEV)
    cut = tmp_path / "flux1-dev.safetensors"
    with open(whole, "rb") as source, open(cut, "wb") as target:
        target.write(source.read(2_000_000))
    with pytest.raises(ModelFileError, match=r"cannot read flux1-dev.safetensors \(2,000,000 of its .* bytes are there\); "
                                             "the file is incomplete — download it again"):
        kinds.read_header(cut)
    (tmp_path / "page.safetensors").write_text("<html>404 Not Found</html>")
    with pytest.raises(ModelFileError, match="cannot read page.safetensors .* download it again"):
        kinds.read_header(tmp_path / "page.safetensors")
    [(part, text)] = flux_problems(FluxFiles(transformer=cut))
    assert part == "transformer" and text.startswith("cannot read flux1-dev.safetensors (2,000,000 of its")


def test_comfyuis_newer_fp8_layout_is_multiplied_back():
    """ComfyUI's mixed-precision files store `<layer>.weight_scale` (and `.input_scale`) beside fp8 weights."""
    weight = torch.randn(8, 16)
    scale = weight.abs().max() / 448
    state = {"layer.weight": (weight / scale).to(torch.float8_e4m3fn), "layer.weight_scale": scale.reshape(()),
             "layer.input_scale": torch.tensor(1.0), "layer.bias": torch.zeros(8)}
    out = unscale_fp8(state, torch.float32)
    assert set(out) == {"layer.weight", "layer.bias"}
    assert (out["layer.weight"] - weight).abs().max() <= weight.abs().max() / 8


# ---- the all-in-one checkpoint's layout is ComfyUI's ------------------------------------------------------

ORACLE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch
import comfy.supported_models, comfy.text_encoders.flux
model = comfy.text_encoders.flux.FluxClipModel(device="meta", dtype=torch.float16)
config = comfy.supported_models.Flux({"image_model": "flux", "guidance_embed": True})
print("KEYS " + json.dumps(sorted(config.process_clip_state_dict_for_saving(model.state_dict()))))
"""


def test_the_tiny_all_in_one_checkpoint_has_comfyuis_save_layout(tmp_path):
    """ComfyUI's own Flux text encoders (real size, on the meta device) saved as its checkpoint saver
    names them: the tiny checkpoint's text-encoder keys are exactly those for the layers it has (its
    transformer and VAE parts come from ComfyUI's key maps already)."""
    import re

    result = subprocess.run([str(comfyui_dir() / "venv" / "bin" / "python"), "-c", ORACLE,
                             str(comfyui_dir() / "ComfyUI")], capture_output=True, text=True, timeout=300)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("KEYS ")]
    real = json.loads(line[len("KEYS "):])
    files = tiny.build_tiny_files(tmp_path / "tiny")
    ours = set(kinds.read_header(files.checkpoint_file).shapes)
    ours_text = {key for key in ours if key.startswith("text_encoders.")}
    layers = {"clip_l": tiny.CLIP["num_hidden_layers"], "t5xxl": tiny.T5["num_layers"]}

    def present(key):
        match = re.search(r"text_encoders\.(\w+)\.transformer\.\w+(?:\.encoder)?\.(?:layers|block)\.(\d+)\.", key)
        return match is None or int(match.group(2)) < layers[match.group(1)]

    assert ours_text == {key for key in real if present(key)}
    assert {key.split(".")[0] for key in ours} == {"model", "vae", "text_encoders"}


# ---- the loaders inside ComfyUI's own validation and execution ---------------------------------------------

ENGINE = r"""
import asyncio, json, os, sys, tempfile
comfy_root, pack_root, pack_name, base = sys.argv[1:5]
sys.path.insert(0, comfy_root)
os.chdir(comfy_root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = base
import utils.extra_config
import server
import nodes, execution
from comfy_api.latest import io

class AnyName:                       # a node whose output feeds a combo input (as many packs' switches do)
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING", {})}}
    RETURN_TYPES = (io.AnyType.io_type,)
    FUNCTION = "run"
    CATEGORY = "test"
    def run(self, value):
        return (value,)

""" + ENGINE_SERVER_AND_PACK + r"""
nodes.NODE_CLASS_MAPPINGS["TestAnyName"] = AnyName

reports = []
for case in json.loads(sys.stdin.read()):
    valid = asyncio.run(execution.validate_prompt("prompt", case["prompt"], None))
    report = {"valid": valid[0], "node_errors": valid[3]}
    if valid[0] and case.get("execute"):
        stub = server.PromptServer.instance = Server()
        executor = execution.PromptExecutor(stub, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})  # ComfyUI 0.33 reads ram_inactive
        executor.execute(case["prompt"], "prompt", {"client_id": "test"}, valid[2])
        report["errors"] = [data.get("exception_message") for event, data in stub.events if event == "execution_error"]
    reports.append(report)
print("REPORT " + json.dumps(reports, default=str))
"""


def run_in_comfyui(base: Path, cases: list[dict]) -> list[dict]:
    result = subprocess.run([str(comfyui_dir() / "venv" / "bin" / "python"), "-c", ENGINE, str(comfyui_dir() / "ComfyUI"),
                             str(REPO_ROOT), PACK_NAME, str(base)], input=json.dumps(cases), capture_output=True, text=True,
                            timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A ComfyUI base directory whose models/ hold the tiny InstantCharacter files, a FLUX all-in-one
    checkpoint, an SD 1.5 checkpoint (header only) and the tiny InstantID files."""
    import face_models
    import instantid_models

    base = tmp_path_factory.mktemp("base")
    names = tiny.install_into_models(tiny.build_tiny_files(tmp_path_factory.mktemp("ic")), base / "models")
    instantid = instantid_models.build_tiny_instantid(tmp_path_factory.mktemp("iid"))
    antelopev2 = face_models.antelopev2(tmp_path_factory.mktemp("faces") / "antelopev2")
    names.update(instantid_models.install_into_models(instantid, antelopev2, base / "models"))
    header_only(base / "models" / "checkpoints" / "sd15-real-size.safetensors", SD15)
    return base, names


def character_loader(names: dict, **changes) -> dict:
    inputs = {"flux_model": names["flux_file"], "vae": names["vae"], "clip_l": names["clip_l"], "t5xxl": names["t5xxl"],
              "siglip": names["siglip"], "dinov2": names["dinov2"], "adapter": names["adapter"],
              "weight_format": "dtype", "memory_mode": "resident", "dtype": "auto", **changes}
    return {"class_type": "CharIDInstantCharacterLoader", "inputs": inputs}


def instantid_loader(names: dict, **changes) -> dict:
    inputs = {"sdxl_model": names["checkpoint"], "identitynet": names["identitynet_file"], "adapter": "ip-adapter-tiny.bin",
              "face_models": ["9", 0], "lcm_lora": "none", "memory_mode": "resident", "dtype": "auto", **changes}
    return {"class_type": "CharIDInstantIDLoader", "inputs": inputs}


def prompt_with(loader: dict, face_loader: dict | None = None) -> dict:
    """The loader feeding an output node (PreviewAny shows anything), as a generator would."""
    prompt = {"10": loader, "11": {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}}}
    if "face_models" in loader["inputs"]:
        prompt["9"] = face_loader or {"class_type": "CharIDFaceModelsLoader",
                                      "inputs": {"antelopev2": "models/antelopev2", "provider": "cpu"}}
    return prompt


def errors_of(report: dict, node: str = "10") -> list[dict]:
    return report["node_errors"].get(node, {}).get("errors", [])


def test_inside_comfyui_only_names_that_leave_the_folders_and_wrong_files_are_refused_at_queue_time(model_folders):
    base, names = model_folders
    cases = {
        # a shared workflow naming files this user lacks queues: only a loader that runs needs them
        "missing": prompt_with(character_loader(names, flux_model="flux1-dev-not-here.safetensors", vae="ae-elsewhere.sft",
                                                siglip="(none found)", adapter="instantcharacter_ip-adapter.bin")),
        "missing_instantid": prompt_with(instantid_loader(names, sdxl_model="sd_xl_base_missing.safetensors",
                                                          identitynet="Other/ControlNetModel (diffusers folder)",
                                                          adapter="(none found)", lcm_lora="lcm-missing.safetensors"),
                                         {"class_type": "CharIDFaceModelsLoader",
                                          "inputs": {"antelopev2": "(none found)", "provider": "cpu"}}),
        # names that could leave the model folders
        "escape_folder": prompt_with(character_loader(names, siglip="clip_vision/../../outside/x")),
        "escape_absolute": prompt_with(character_loader(names, adapter="/etc/passwd")),
        "escape_drive": prompt_with(character_loader(names, vae="C:\\Windows\\win.ini")),
        "escape_backslash": prompt_with(character_loader(names, t5xxl="..\\..\\secret.safetensors")),
        "escape_nul": prompt_with(character_loader(names, clip_l="clip_l.safetensors\x00.txt")),
        "escape_instantid": prompt_with(instantid_loader(names, identitynet="../../x (diffusers folder)")),
        "escape_faces": prompt_with(instantid_loader(names), {"class_type": "CharIDFaceModelsLoader", "inputs": {
            "antelopev2": "../../../tmp", "provider": "cpu"}}),
        # files of the wrong kind, each problem once under its own input
        "t5_as_clip": prompt_with(character_loader(names, clip_l=names["t5xxl"])),
        "sd15_as_sdxl": prompt_with(instantid_loader(names, sdxl_model="sd15-real-size.safetensors")),
        "two_problems": prompt_with(character_loader(names, clip_l=names["t5xxl"], t5xxl=names["clip_l"])),
        "all_in_one": prompt_with(character_loader(names, flux_model=names["flux_checkpoint"], vae="(from flux_model)",
                                                   clip_l="(from flux_model)", t5xxl="(from flux_model)")),
    }
    reports = dict(zip(cases, run_in_comfyui(base, [{"prompt": prompt} for prompt in cases.values()])))
    assert reports["missing"]["valid"] and reports["missing_instantid"]["valid"], reports
    assert reports["all_in_one"]["valid"], reports["all_in_one"]
    for case, (node, text) in {
            "escape_folder": ("10", "siglip: 'clip_vision/../../outside/x' is not a name from the model folders "
                                    "(it steps out of the folder with '..')"),
            "escape_absolute": ("10", "adapter: '/etc/passwd' is not a name from the model folders (it is an absolute "
                                      "path)"),
            "escape_drive": ("10", "vae: 'C:\\\\Windows\\\\win.ini' is not a name from the model folders (it names a "
                                   "drive)"),
            "escape_backslash": ("10", "t5xxl: '..\\\\..\\\\secret.safetensors' is not a name from the model folders "
                                       "(it steps out"),
            "escape_nul": ("10", "clip_l: 'clip_l.safetensors\\x00.txt' is not a name from the model folders (it holds "
                                 "a NUL character)"),
            "escape_instantid": ("10", "identitynet: '../../x (diffusers folder)' is not a name from the model folders"),
            "escape_faces": ("9", "antelopev2: '../../../tmp' is not a name from the model folders"),
            "t5_as_clip": ("10", "clip_l: t5xxl-tiny.safetensors is a T5 text encoder; choose the CLIP-L text encoder"),
            "sd15_as_sdxl": ("10", "sdxl_model: sd15-real-size.safetensors is a Stable Diffusion 1.x model; InstantID "
                                   "needs an SDXL checkpoint"),
    }.items():
        report = reports[case]
        [error] = errors_of(report, node)                   # one entry for the node, not one per input
        assert not report["valid"] and text in error["details"], (case, error)
        assert error["details"].count(text.split(":")[0] + ":") == 1, error["details"]
    [error] = errors_of(reports["two_problems"])
    assert error["details"].splitlines()[-2:] == [
        "clip_l: t5xxl-tiny.safetensors is a T5 text encoder; choose the CLIP-L text encoder (clip_l.safetensors)",
        "t5xxl: clip_l-tiny.safetensors is a 64-wide CLIP text encoder; choose the T5-XXL text encoder "
        "(t5xxl_fp16.safetensors or an fp8 version)"]


def test_inside_comfyui_a_linked_file_input_is_checked_when_the_loader_runs(model_folders):
    """A file name that comes from another node is unknown at queue time (ComfyUI passes None): the
    prompt queues, and the loader refuses a name that is not in its folder's list when it runs."""
    base, names = model_folders

    def linked(value: str) -> dict:
        prompt = prompt_with(character_loader(names, flux_model=["20", 0]))
        prompt["20"] = {"class_type": "TestAnyName", "inputs": {"value": value}}
        return {"prompt": prompt, "execute": True}

    unlisted, escaping = run_in_comfyui(base, [linked("flux1-dev-not-here.safetensors"),
                                               linked("../../checkpoints/sd15-real-size.safetensors")])
    for report in (unlisted, escaping):
        assert report["valid"], report["node_errors"]
    [message] = unlisted["errors"]
    assert message.startswith("flux_model: 'flux1-dev-not-here.safetensors' is not in ") and "diffusion_models" in message
    assert "black-forest-labs/FLUX.1-dev" in message                     # where to get it
    [message] = escaping["errors"]
    assert message.startswith("flux_model: '../../checkpoints/sd15-real-size.safetensors' is not a name from the model "
                              "folders (it steps out of the folder with '..')")
