#!/usr/bin/env python3
"""Rebuild the example workflows in workflows/ with the real ComfyUI frontend.

Each graph below is created node by node in the browser (LiteGraph), so the saved files are
exactly what ComfyUI itself writes when a user saves a workflow. Needs the test set-up
(scripts/setup.sh --test). Run with ComfyUI's venv python:

    .comfyui/venv/bin/python scripts/build_workflows.py [name ...]
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:                  # Python 3.10: the same parser pip carries
    from pip._vendor import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests")]

from comfyui_server import ComfyUIServer  # noqa: E402

# the example character the pack copies into ComfyUI's input folder (nodes/first_run.py): every
# workflow runs out of the box, and choosing another image in Load Image uses the user's own
REFERENCE = "character_identity_example.png"
POSE = REFERENCE
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

# What ComfyUI-Manager's workflow-metadata extension writes into every node it knows the pack of (the
# frontend itself only reads these): the registry id, pyproject's [project] name in lower case, and the
# pack's version padded to three parts. Manager offers to install a missing pack by this id.
PACK_PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
PACK_METADATA = {"cnr_id": PACK_PROJECT["name"].strip().lower(),
                 "ver": ".".join((PACK_PROJECT["version"].split(".") + ["0", "0"])[:3])}

# Where each single-file model the workflows name comes from (the publishers docs/local-models.md names):
# a loader carries these as properties.models, as ComfyUI's own templates do, and the frontend lists a
# missing one with its folder and link (frontend 1.32 offers a download only for .safetensors/.sft, 1.49
# also .ckpt/.pth/.pt: the .bin adapters are listed without one). Folders (SigLIP, DINOv2, the
# IdentityNet's ControlNetModel/, antelopev2) are no single download and carry nothing.
HUGGING_FACE = "https://huggingface.co"
MODEL_SOURCES = {
    "flux1-dev.safetensors": ("diffusion_models", f"{HUGGING_FACE}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"),
    "ae.safetensors": ("vae", f"{HUGGING_FACE}/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors"),
    "clip_l.safetensors": ("text_encoders", f"{HUGGING_FACE}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"),
    "t5xxl_fp16.safetensors": ("text_encoders",
                               f"{HUGGING_FACE}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"),
    "instantcharacter_ip-adapter.bin": (
        "instantcharacter", f"{HUGGING_FACE}/Tencent/InstantCharacter/resolve/main/instantcharacter_ip-adapter.bin"),
    "sd_xl_base_1.0.safetensors": (
        "checkpoints", f"{HUGGING_FACE}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"),
    "ip-adapter.bin": ("instantid", f"{HUGGING_FACE}/InstantX/InstantID/resolve/main/ip-adapter.bin"),
    # the IdentityNet as one file for ControlNetLoader, where the all-in-one loader's folder keeps it
    "InstantID/ControlNetModel/diffusion_pytorch_model.safetensors": (
        "controlnet", f"{HUGGING_FACE}/InstantX/InstantID/resolve/main/ControlNetModel/diffusion_pytorch_model.safetensors"),
}


def model_metadata(widgets: dict) -> list[dict]:
    """properties.models of a node: each of its widget values that is a file in MODEL_SOURCES."""
    return [{"name": value, "url": MODEL_SOURCES[value][1], "directory": MODEL_SOURCES[value][0]}
            for value in widgets.values() if isinstance(value, str) and value in MODEL_SOURCES]


SCENE = "the person reading a map in a snowy mountain village, warm evening light"
# the local loaders' files, by the names the real files have
IC_FILES = {"flux_model": "flux1-dev.safetensors", "vae": "ae.safetensors", "clip_l": "clip_l.safetensors",
            "t5xxl": "t5xxl_fp16.safetensors", "siglip": "siglip-so400m-patch14-384", "dinov2": "dinov2-giant",
            "adapter": "instantcharacter_ip-adapter.bin", "memory_mode": "model_offload"}
ID_FILES = {"sdxl_model": "sd_xl_base_1.0.safetensors", "identitynet": "InstantID/ControlNetModel (diffusers folder)",
            "adapter": "ip-adapter.bin", "memory_mode": "model_offload"}

# name -> (nodes: id -> (type, [x, y], {widget: value}), links: [(from, output, to, input)], notes)
WORKFLOWS = {
    "prepare_character_reference": (
        {
            "load": ("LoadImage", [60, 200], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [420, 200], {}),
            "save": ("SaveImage", [800, 200], {"filename_prefix": "character_identity/reference"}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"), ("prepare", 0, "save", "images")],
        "Prepare Character Reference: load your character image (ideally with a transparent or plain background; "
        "the pack's example character is loaded to start with); "
        "the node pads it to a white square at 1024 px, the input InstantCharacter expects. LoadImage's MASK output "
        "marks transparent pixels, so they become background too. Feed the result into any Character Identity "
        "generator node.",
    ),
    "cloud_providers_side_by_side": (
        {
            "load": ("LoadImage", [40, 160], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [380, 160], {"size": 1024}),
            "wavespeed": ("CharIDWaveSpeedInstantCharacter", [760, 40],
                          {"prompt": "the character reading a map in a snowy mountain village, warm evening light",
                           "seed": 42}),
            "fal": ("CharIDFalInstantCharacter", [760, 560],
                    {"prompt": "the character reading a map in a snowy mountain village, warm evening light",
                     "seed": 42}),
            "segmind": ("CharIDSegmindInstantID", [760, 1080],
                        {"prompt": "portrait photo of the person in a snowy mountain village, warm evening light",
                         "seed": 42}),
            "save_wavespeed": ("SaveImage", [1200, 40], {"filename_prefix": "character_identity/wavespeed"}),
            "save_fal": ("SaveImage", [1200, 560], {"filename_prefix": "character_identity/fal"}),
            "save_segmind": ("SaveImage", [1200, 1080], {"filename_prefix": "character_identity/segmind"}),
            "info_wavespeed": ("PreviewAny", [1560, 40], {}),
            "info_fal": ("PreviewAny", [1560, 560], {}),
            "info_segmind": ("PreviewAny", [1560, 1080], {}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"),
         ("prepare", 0, "wavespeed", "reference"), ("prepare", 0, "fal", "reference"),
         ("prepare", 0, "segmind", "reference"),
         ("wavespeed", 0, "save_wavespeed", "images"), ("fal", 0, "save_fal", "images"),
         ("segmind", 0, "save_segmind", "images"),
         ("wavespeed", 1, "info_wavespeed", "source"), ("fal", 1, "info_fal", "source"),
         ("segmind", 1, "info_segmind", "source")],
        "Three cloud providers on one reference, run at the same time. Keys come from WAVESPEED_API_KEY, FAL_KEY "
        "and SEGMIND_API_KEY (or the keys.ini file, see the README): never type a key into a node. The reference "
        "image is sent to each provider. Every generator node has the same sockets, so any of them can be replaced "
        "by another (local or cloud) without rewiring. The info outputs show job id, seed, timings and cost.",
    ),
    "cloud_wavespeed_instantcharacter": (
        {
            "load": ("LoadImage", [40, 200], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [380, 200], {"size": 1024}),
            "generate": ("CharIDWaveSpeedInstantCharacter", [760, 200],
                         {"prompt": "the character reading a map in a snowy mountain village, warm evening light",
                          "seed": 42}),
            "save": ("SaveImage", [1200, 200], {"filename_prefix": "character_identity/wavespeed"}),
            "info": ("PreviewAny", [1200, 620], {}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"), ("prepare", 0, "generate", "reference"),
         ("generate", 0, "save", "images"), ("generate", 1, "info", "source")],
        "InstantCharacter on WaveSpeed AI (API v3; v2 selectable). Key: WAVESPEED_API_KEY in the environment or "
        "the keys.ini file (README: API keys) — never in a node. The reference image is uploaded to WaveSpeed "
        "(kept 7 days). The info output shows the job id, seed, timings and cost.",
    ),
    "cloud_fal_instantcharacter": (
        {
            "load": ("LoadImage", [40, 200], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [380, 200], {"size": 1024}),
            "generate": ("CharIDFalInstantCharacter", [760, 200],
                         {"prompt": "the character reading a map in a snowy mountain village, warm evening light",
                          "seed": 42}),
            "save": ("SaveImage", [1200, 200], {"filename_prefix": "character_identity/fal"}),
            "info": ("PreviewAny", [1200, 620], {}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"), ("prepare", 0, "generate", "reference"),
         ("generate", 0, "save", "images"), ("generate", 1, "info", "source")],
        "InstantCharacter on fal.ai (fal-ai/instant-character, through fal's queue; Cancel cancels the job at fal). "
        "Key: FAL_KEY in the environment or the keys.ini file — never in a node. fal charges per megapixel of "
        "output; the info output shows what the job cost.",
    ),
    "cloud_segmind_instantid": (
        {
            "load": ("LoadImage", [40, 200], {"image": REFERENCE}),
            "pose": ("LoadImage", [40, 620], {"image": POSE}),
            "generate": ("CharIDSegmindInstantID", [420, 200],
                         {"prompt": "portrait of the person as an astronaut, detailed helmet, soft studio light",
                          "style": "Watercolor", "seed": 42}),
            "save": ("SaveImage", [860, 200], {"filename_prefix": "character_identity/segmind"}),
            "info": ("PreviewAny", [860, 620], {}),
        },
        [("load", 0, "generate", "reference"), ("pose", 0, "generate", "pose_image"),
         ("generate", 0, "save", "images"), ("generate", 1, "info", "source")],
        "InstantID on Segmind with a pose photo (the face position to follow) and a style. Key: SEGMIND_API_KEY in "
        "the environment or the keys.ini file — never in a node. The face and pose photos are sent to Segmind "
        "inside the request. Both Load Image nodes start with the pack's example character: choose the person's photo "
        "and a pose photo there.",
    ),
    "local_instantcharacter": (
        {
            "load": ("LoadImage", [40, 200], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [380, 200], {"size": 1024}),
            "loader": ("CharIDInstantCharacterLoader", [380, 560],
                       {"flux_model": "flux1-dev.safetensors", "vae": "ae.safetensors", "clip_l": "clip_l.safetensors",
                        "t5xxl": "t5xxl_fp16.safetensors", "siglip": "siglip-so400m-patch14-384",
                        "dinov2": "dinov2-giant", "adapter": "instantcharacter_ip-adapter.bin",
                        "memory_mode": "model_offload"}),
            "generate": ("CharIDInstantCharacterLocal", [820, 200],
                         {"prompt": "the character reading a map in a snowy mountain village, warm evening light",
                          "seed": 42}),
            "save": ("SaveImage", [1260, 200], {"filename_prefix": "character_identity/instantcharacter_local"}),
            "info": ("PreviewAny", [1260, 620], {}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"), ("prepare", 0, "generate", "reference"),
         ("loader", 0, "generate", "pipeline"), ("generate", 0, "save", "images"), ("generate", 1, "info", "source")],
        "Local InstantCharacter (FLUX.1-dev + SigLIP + DINOv2 + the InstantCharacter adapter) on your own GPU. "
        "Needs the files listed in the README's Model files section (FLUX.1-dev and the adapter are non-commercial "
        "releases); pick yours in the loader if their names differ. model_offload needs ~24 GB of VRAM; choose "
        "group_offload on smaller GPUs. The generator's sockets are the cloud InstantCharacter nodes': swap freely.",
    ),
    "local_instantid": (
        {
            "load": ("LoadImage", [40, 200], {"image": REFERENCE}),
            "faces": ("CharIDFaceModelsLoader", [40, 620], {"antelopev2": "models/antelopev2"}),
            "analyze": ("CharIDFaceAnalysis", [420, 620], {}),
            "preview_kps": ("PreviewImage", [780, 900], {}),
            "preview_face": ("PreviewImage", [1040, 900], {}),
            "loader": ("CharIDInstantIDLoader", [420, 200],
                       {"sdxl_model": "sd_xl_base_1.0.safetensors",
                        "identitynet": "InstantID/ControlNetModel (diffusers folder)", "adapter": "ip-adapter.bin",
                        "memory_mode": "model_offload"}),
            "generate": ("CharIDInstantIDLocal", [860, 200],
                         {"prompt": "portrait of the person as an astronaut, detailed helmet, soft studio light",
                          "style": "Watercolor", "seed": 42}),
            "save": ("SaveImage", [1300, 200], {"filename_prefix": "character_identity/instantid_local"}),
            "info": ("PreviewAny", [1300, 640], {}),
            "similarity": ("CharIDIdentitySimilarity", [1660, 200], {}),
            "report": ("PreviewAny", [2020, 200], {}),
            "annotated": ("PreviewImage", [2020, 480], {}),
        },
        [("faces", 0, "analyze", "face_models"), ("load", 0, "analyze", "image"),
         ("analyze", 0, "preview_kps", "images"), ("analyze", 1, "preview_face", "images"),
         ("faces", 0, "loader", "face_models"), ("load", 0, "generate", "reference"),
         ("loader", 0, "generate", "pipeline"), ("generate", 0, "save", "images"), ("generate", 1, "info", "source"),
         ("faces", 0, "similarity", "face_models"), ("load", 0, "similarity", "reference"),
         ("generate", 0, "similarity", "images"), ("similarity", 1, "report", "source"),
         ("similarity", 2, "annotated", "images")],
        "Local InstantID (SDXL + IdentityNet + the face adapter) with the antelopev2 face models. Analyze Face shows "
        "what the detector sees (the keypoint image the IdentityNet gets, and the aligned face); Identity "
        "Similarity scores how well the result kept the face. Width and height 0 take the InstantID demo's size "
        "for the photo. Needs the files in the README's Model files section (the InstantID weights and antelopev2 "
        "are non-commercial research releases). The generator's sockets are the Segmind InstantID node's.",
    ),
    "compare_backends": (
        {
            "load": ("LoadImage", [40, 300], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [380, 300], {"size": 1024}),
            "faces": ("CharIDFaceModelsLoader", [380, 700], {"antelopev2": "models/antelopev2"}),
            "ic_loader": ("CharIDInstantCharacterLoader", [760, -520], IC_FILES),
            "ic_local": ("CharIDInstantCharacterLocal", [1200, -520], {"prompt": SCENE, "seed": 42}),
            "id_loader": ("CharIDInstantIDLoader", [760, 60], ID_FILES),
            "id_local": ("CharIDInstantIDLocal", [1200, 60], {"prompt": SCENE, "seed": 42}),
            "wavespeed": ("CharIDWaveSpeedInstantCharacter", [1200, 640], {"prompt": SCENE, "seed": 42}),
            "fal": ("CharIDFalInstantCharacter", [1200, 1140], {"prompt": SCENE, "seed": 42}),
            "segmind": ("CharIDSegmindInstantID", [1200, 1680], {"prompt": SCENE, "seed": 42}),
            "compare": ("CharIDCompareResults", [1640, 300], {}),
            "save": ("SaveImage", [2040, 300], {"filename_prefix": "character_identity/compare"}),
            "report": ("PreviewAny", [2040, 760], {}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"), ("faces", 0, "id_loader", "face_models"),
         ("prepare", 0, "ic_local", "reference"), ("ic_loader", 0, "ic_local", "pipeline"),
         ("prepare", 0, "id_local", "reference"), ("id_loader", 0, "id_local", "pipeline"),
         ("prepare", 0, "wavespeed", "reference"), ("prepare", 0, "fal", "reference"),
         ("prepare", 0, "segmind", "reference"),
         ("faces", 0, "compare", "face_models"), ("prepare", 0, "compare", "reference"),
         ("ic_local", 0, "compare", "images_1"), ("ic_local", 1, "compare", "info_1"),
         ("id_local", 0, "compare", "images_2"), ("id_local", 1, "compare", "info_2"),
         ("wavespeed", 0, "compare", "images_3"), ("wavespeed", 1, "compare", "info_3"),
         ("fal", 0, "compare", "images_4"), ("fal", 1, "compare", "info_4"),
         ("segmind", 0, "compare", "images_5"), ("segmind", 1, "compare", "info_5"),
         ("compare", 0, "save", "images"), ("compare", 1, "report", "source")],
        "Compare backends: one reference and one prompt into every backend — local InstantCharacter and InstantID, "
        "WaveSpeed, fal and Segmind — and one captioned grid of the results with each one's identity similarity to "
        "the reference (the report names the best). The cloud nodes need their keys (README: API keys); the local "
        "ones the files in the README's Model files section. A backend without its key or files does not run: its "
        "tile in the grid says why, and the others run.",
    ),
    "hybrid_local_and_cloud": (
        {
            "load": ("LoadImage", [40, 300], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [380, 300], {"size": 1024}),
            "faces": ("CharIDFaceModelsLoader", [380, 700], {"antelopev2": "models/antelopev2"}),
            "id_loader": ("CharIDInstantIDLoader", [760, 0], ID_FILES),
            "id_local": ("CharIDInstantIDLocal", [1200, 0],
                         {"prompt": "close-up portrait of the person, soft window light, 85mm photo", "seed": 42}),
            "fal": ("CharIDFalInstantCharacter", [1200, 620],
                    {"prompt": "full-body shot of the person walking through a snowy mountain village at dusk",
                     "seed": 42}),
            "stitch": ("ImageStitch", [1640, 300], {"direction": "right", "match_image_size": True}),
            "save": ("SaveImage", [2000, 300], {"filename_prefix": "character_identity/hybrid"}),
            "info_local": ("PreviewAny", [1640, 40], {}),
            "info_cloud": ("PreviewAny", [1640, 660], {}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"), ("faces", 0, "id_loader", "face_models"),
         ("load", 0, "id_local", "reference"), ("id_loader", 0, "id_local", "pipeline"),
         ("prepare", 0, "fal", "reference"), ("id_local", 0, "stitch", "image1"), ("fal", 0, "stitch", "image2"),
         ("stitch", 0, "save", "images"), ("id_local", 1, "info_local", "source"), ("fal", 1, "info_cloud", "source")],
        "Hybrid: a local InstantID portrait on your GPU and a cloud InstantCharacter full-body scene of the same "
        "person (fal), run at the same time — the cloud job polls while the GPU works — and joined into one image. "
        "Needs FAL_KEY (README: API keys) and the InstantID files (README: Model files).",
    ),
    "route_local_or_cloud": (
        {
            "load": ("LoadImage", [40, 300], {"image": REFERENCE}),
            "faces": ("CharIDFaceModelsLoader", [40, 700], {"antelopev2": "models/antelopev2"}),
            "id_loader": ("CharIDInstantIDLoader", [420, 0], ID_FILES),
            "id_local": ("CharIDInstantIDLocal", [860, 0],
                         {"prompt": "portrait of the person as an astronaut, detailed helmet", "style": "Watercolor",
                          "seed": 42}),
            "segmind": ("CharIDSegmindInstantID", [860, 620],
                        {"prompt": "portrait of the person as an astronaut, detailed helmet", "style": "Watercolor",
                         "seed": 42}),
            "route": ("CharIDRouteLocalOrCloud", [1300, 300], {"prefer": "auto", "min_free_vram_gb": 12.0}),
            "save": ("SaveImage", [1660, 300], {"filename_prefix": "character_identity/route"}),
            "info": ("PreviewAny", [1660, 700], {}),
            "why": ("PreviewAny", [1300, 700], {}),
        },
        [("faces", 0, "id_loader", "face_models"), ("load", 0, "id_local", "reference"),
         ("id_loader", 0, "id_local", "pipeline"), ("load", 0, "segmind", "reference"),
         ("id_local", 0, "route", "local_images"), ("id_local", 1, "route", "local_info"),
         ("segmind", 0, "route", "cloud_images"), ("segmind", 1, "route", "cloud_info"),
         ("route", 0, "save", "images"), ("route", 1, "info", "source"), ("route", 2, "why", "source")],
        "Route: InstantID on your GPU when its model files are there and at least min_free_vram_gb of VRAM is free, "
        "Segmind InstantID otherwise — decided when the prompt runs, and only the chosen branch runs (the other "
        "costs neither credits nor VRAM). It decides once, when it runs, and says so under the node. prefer = local "
        "or cloud forces a branch. The 'why' preview says which branch ran and why. The cloud branch needs "
        "SEGMIND_API_KEY.",
    ),
    "native_instantcharacter": (
        {
            "load": ("LoadImage", [40, 700], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [380, 700], {"size": 1024}),
            "unet": ("UNETLoader", [40, 40], {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}),
            "clip": ("DualCLIPLoader", [40, 240],
                     {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}),
            "vae": ("VAELoader", [40, 480], {"vae_name": "ae.safetensors"}),
            # bypassed until you pick your LoRA (select it and press Ctrl+B): a shared workflow cannot name one
            "lora": ("LoraLoaderModelOnly", [380, 40], {"lora_name": "your_flux_lora.safetensors", "strength_model": 1.0},
                     {"mode": 4}),
            "adapter": ("CharIDLoadInstantCharacterAdapter", [380, 240], {"adapter": "instantcharacter_ip-adapter.bin"}),
            "encoders": ("CharIDLoadInstantCharacterEncoders", [380, 400],
                         {"siglip": "siglip-so400m-patch14-384", "dinov2": "dinov2-giant"}),
            "apply": ("CharIDApplyInstantCharacter", [760, 40], {"weight": 0.9}),
            "text": ("CLIPTextEncode", [760, 400], {"text": "the character reading a map in a snowy mountain village, "
                                                            "warm evening light"}),
            "guidance": ("FluxGuidance", [1120, 400], {"guidance": 3.5}),
            "negative": ("ConditioningZeroOut", [1120, 560], {}),
            "latent": ("EmptySD3LatentImage", [760, 700], {"width": 1024, "height": 1024, "batch_size": 1}),
            "sample": ("KSampler", [1440, 40], {"seed": 42, "steps": 28, "cfg": 1.0, "sampler_name": "euler",
                                               "scheduler": "simple", "denoise": 1.0}),
            "decode": ("VAEDecode", [1800, 40], {}),
            "save": ("SaveImage", [2040, 40], {"filename_prefix": "character_identity/instantcharacter_native"}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"), ("unet", 0, "lora", "model"),
         ("lora", 0, "apply", "model"), ("adapter", 0, "apply", "adapter"), ("encoders", 0, "apply", "image_encoders"),
         ("prepare", 0, "apply", "reference"), ("clip", 0, "text", "clip"), ("text", 0, "guidance", "conditioning"),
         ("text", 0, "negative", "conditioning"), ("apply", 0, "sample", "model"),
         ("guidance", 0, "sample", "positive"), ("negative", 0, "sample", "negative"),
         ("latent", 0, "sample", "latent_image"), ("sample", 0, "decode", "samples"), ("vae", 0, "decode", "vae"),
         ("decode", 0, "save", "images")],
        "Native InstantCharacter: your own FLUX.1-dev MODEL (UNETLoader here; CheckpointLoaderSimple, an fp8 "
        "weight_dtype or a GGUF loader work the same), patched by Apply InstantCharacter and sampled by ComfyUI's "
        "KSampler (cfg 1, FluxGuidance 3.5, as ComfyUI's FLUX graphs use). The LoRA node is bypassed: pick your "
        "FLUX LoRA and un-bypass it (Ctrl+B), or leave it. Needs the files in the README's Model files section "
        "(FLUX.1-dev and the adapter are non-commercial releases); ComfyUI loads and offloads them as it does its "
        "own models. Weight 0 gives the model as it was; apply once per MODEL.",
    ),
    "native_instantid": (
        {
            "load": ("LoadImage", [40, 700], {"image": REFERENCE}),
            "faces": ("CharIDFaceModelsLoader", [40, 1100], {"antelopev2": "models/antelopev2"}),
            "face": ("CharIDInstantIDFace", [380, 700], {}),
            "checkpoint": ("CheckpointLoaderSimple", [40, 40], {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
            # bypassed until you pick your LoRA (select it and press Ctrl+B): a shared workflow cannot name one
            "lora": ("LoraLoader", [40, 240], {"lora_name": "your_sdxl_lora.safetensors", "strength_model": 1.0,
                                               "strength_clip": 1.0}, {"mode": 4}),
            "controlnet": ("ControlNetLoader", [380, 860],
                           {"control_net_name": "InstantID/ControlNetModel/diffusion_pytorch_model.safetensors"}),
            "adapter": ("CharIDLoadInstantIDAdapter", [380, 1000], {"adapter": "ip-adapter.bin"}),
            "positive": ("CLIPTextEncode", [380, 40], {"text": "portrait of the person as an astronaut, detailed "
                                                               "helmet, soft studio light"}),
            "negative": ("CLIPTextEncode", [380, 360], {"text": "lowres, low quality, watermark, text, deformed, "
                                                               "blurry, out of focus"}),
            "apply": ("CharIDApplyInstantID", [800, 40], {"identity_strength": 0.8, "adapter_strength": 0.8}),
            "latent": ("EmptyLatentImage", [800, 700], {"width": 1024, "height": 1024, "batch_size": 1}),
            "sample": ("KSampler", [1180, 40], {"seed": 42, "steps": 30, "cfg": 5.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0}),
            "decode": ("VAEDecode", [1540, 40], {}),
            "save": ("SaveImage", [1780, 40], {"filename_prefix": "character_identity/instantid_native"}),
        },
        [("checkpoint", 0, "lora", "model"), ("checkpoint", 1, "lora", "clip"), ("lora", 0, "apply", "model"),
         ("lora", 1, "positive", "clip"), ("lora", 1, "negative", "clip"), ("positive", 0, "apply", "positive"),
         ("negative", 0, "apply", "negative"), ("adapter", 0, "apply", "adapter"), ("faces", 0, "face", "face_models"),
         ("load", 0, "face", "reference"), ("face", 0, "apply", "face"), ("controlnet", 0, "apply", "control_net"),
         ("apply", 0, "sample", "model"), ("apply", 1, "sample", "positive"), ("apply", 2, "sample", "negative"),
         ("latent", 0, "sample", "latent_image"), ("sample", 0, "decode", "samples"),
         ("checkpoint", 2, "decode", "vae"), ("decode", 0, "save", "images")],
        "Native InstantID: your own SDXL MODEL (CheckpointLoaderSimple here; UNETLoader or an SDXL fine-tune work "
        "the same) with InstantID's face adapter patched in by Apply InstantID (native), and the IdentityNet as your "
        "ControlNet (ControlNetLoader takes InstantX's ControlNetModel/diffusion_pytorch_model.safetensors as "
        "released, in models/controlnet/InstantID/ControlNetModel/) on the conditioning; sampled by ComfyUI's "
        "KSampler (cfg 5, 30 steps, as the InstantID demo). InstantID Face takes the identity from the reference's "
        "largest face (antelopev2) and its keypoints from the pose photo if you connect one. The LoRA node is "
        "bypassed: pick your SDXL LoRA and un-bypass it (Ctrl+B), or leave it. Needs the files in the README's Model "
        "files section (the InstantID weights and antelopev2 are non-commercial research releases). Strengths 0 give "
        "the model as it was; apply once per MODEL.",
    ),
}

BUILD_JS = """([nodes, links, note, pack, coreVersion]) => {
  const LG = window.LiteGraph, graph = window.app.graph;
  graph.clear();
  window.app.canvas.ds.scale = 1;           // the saved view: as a fresh canvas has it
  window.app.canvas.ds.offset = [0, 0];
  const made = {};
  for (const [key, [type, pos, widgets, options, models]] of Object.entries(nodes)) {
    const node = LG.createNode(type);
    if (!node) throw new Error("unknown node type " + type);
    node.pos = pos;
    // as ComfyUI-Manager's workflow metadata does: the pack's nodes by its registry id, ComfyUI's own
    // (nodes, comfy_extras) as comfy-core with the ComfyUI version; frontend-only nodes (Note) get none
    const module = node.constructor.nodeData?.python_module?.split(".") ?? [];
    if (module[0] === "custom_nodes") Object.assign(node.properties, pack);
    else if (["nodes", "comfy_extras"].includes(module[0]))
      Object.assign(node.properties, {cnr_id: "comfy-core", ver: coreVersion});
    if (models.length) node.properties.models = models;
    graph.add(node);
    for (const [name, value] of Object.entries(widgets)) {
      const widget = node.widgets.find(w => w.name === name);
      if (!widget) throw new Error(type + " has no widget " + name);
      widget.value = value;
    }
    // fixed seeds: a shared workflow gives the same images again, and a side-by-side stays comparable
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
    if (options.mode !== undefined) node.mode = options.mode;     // 4: bypassed
    made[key] = node;
  }
  for (const [from, output, to, input] of links) {
    const target = made[to];
    const slot = target.inputs.findIndex(i => i.name === input);
    if (slot < 0) throw new Error(target.type + " has no input " + input);
    made[from].connect(output, target, slot);
  }
  const text = LG.createNode("Note");
  text.pos = [40, -160];
  text.size = [700, 130];
  text.widgets[0].value = note;
  graph.add(text);
  window.app.canvas.setDirty(true, true);
  // stringify here: it drops `undefined` fields, which would otherwise arrive as nulls the
  // frontend's own schema check rejects when the file is loaded
  return JSON.stringify(graph.serialize());
}"""


CONVERT_JS = """async (workflow) => {
  await window.app.loadGraphData(workflow);
  return (await window.app.graphToPrompt()).output;
}"""

FIT_JS = """() => {
  const nodes = window.app.graph._nodes;
  const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1] - 30));
  const right = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
  const bottom = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
  const canvas = window.app.canvas, ds = canvas.ds, el = canvas.canvas;
  canvas.show_info = false;                 // no frame-rate corner in the picture
  canvas._min_font_size_for_lod = 0;        // full detail at any zoom (not the low-quality boxes)
  canvas._lowQualityZoomThreshold = 0;
  canvas._isLowQuality = false;
  const scale = 0.95 * Math.min(el.clientWidth / (right - left), el.clientHeight / (bottom - top));
  ds.scale = scale;
  ds.offset = [-left + (el.clientWidth / scale - (right - left)) / 2, -top + (el.clientHeight / scale - (bottom - top)) / 2];
  canvas.setDirty(true, true);
}"""


def thumbnail(page, path: Path) -> None:
    """The template browser's picture of a workflow: the whole graph, fitted, as a small JPEG."""
    import base64
    import io

    from PIL import Image

    page.evaluate(FIT_JS)
    page.wait_for_timeout(400)
    # the canvas's own pixels: none of the page's panels and menus drawn over it
    data = page.evaluate("() => window.app.canvas.canvas.toDataURL('image/png')")
    shot = Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB")
    shot.thumbnail((640, 400))
    shot.save(path, "JPEG", quality=82, optimize=True)


def main() -> int:
    from playwright.sync_api import sync_playwright

    server = ComfyUIServer(Path(tempfile.mkdtemp(prefix="charid-workflows-"))).start()
    try:
        server.post_json("/settings", {"Comfy.TutorialCompleted": True})
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_function("() => window.app?.graph && window.app.extensions?.some("
                                   "e => e.name === 'CharacterIdentity.ui')", timeout=90_000)
            (REPO_ROOT / "workflows" / "api").mkdir(exist_ok=True)
            core_version = server.get_json("/system_stats")["system"]["comfyui_version"]
            only = sys.argv[1:]                   # names to rebuild (default: all)
            for name, (nodes, links, note) in WORKFLOWS.items():
                if only and name not in only:
                    continue
                specs = {key: [*spec[:3], spec[3] if len(spec) > 3 else {}, model_metadata(spec[2])]
                         for key, spec in nodes.items()}
                workflow = json.loads(page.evaluate(BUILD_JS, [specs, links, note, PACK_METADATA, core_version]))
                path = REPO_ROOT / "workflows" / f"{name}.json"
                path.write_text(json.dumps(workflow, indent=2) + "\n")
                # the API-format twin, converted by the frontend itself from the file just written
                prompt = page.evaluate(CONVERT_JS, workflow)
                (REPO_ROOT / "workflows" / "api" / f"{name}.json").write_text(json.dumps(prompt, indent=2) + "\n")
                thumbnail(page, REPO_ROOT / "workflows" / f"{name}.jpg")
                print("wrote", path.relative_to(REPO_ROOT), "with its API twin and thumbnail")
            browser.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
