"""The pack's model folders, through ComfyUI's folder_paths (so extra_model_paths.yaml works):
which files and Hugging Face folders a user has, and where a chosen name lives."""
from __future__ import annotations

import os

import folder_paths

INSTANTCHARACTER_FOLDER = "instantcharacter"
INSTANTID_FOLDER = "instantid"
INSIGHTFACE_FOLDER = "insightface"       # the name the popular InstantID packs give models/insightface
ADAPTER_EXTENSIONS = {".bin", ".safetensors"}
FLUX_FILE_EXTENSIONS = (".safetensors", ".sft", ".gguf")
FOLDER_SUFFIX = " (diffusers folder)"
FROM_FOLDER = "(from the diffusers folder)"
NONE_FOUND = "(none found)"
# where users get each file, for the errors that name a missing one
WHERE_TO_GET = {
    "instantcharacter": "instantcharacter_ip-adapter.bin from Hugging Face Tencent/InstantCharacter "
                        "(research and non-commercial use only)",
    "diffusion_models": "flux1-dev.safetensors (or an fp8 / GGUF conversion) from Hugging Face "
                        "black-forest-labs/FLUX.1-dev (FLUX.1 [dev] Non-Commercial License)",
    "vae": "ae.safetensors from Hugging Face black-forest-labs/FLUX.1-dev",
    "text_encoders": "clip_l.safetensors and t5xxl_fp16.safetensors from Hugging Face comfyanonymous/flux_text_encoders",
    "clip_vision": "the Hugging Face folders google/siglip-so400m-patch14-384 and facebook/dinov2-giant",
    "diffusers": "the Hugging Face folder black-forest-labs/FLUX.1-dev",
    "instantid": "ip-adapter.bin from Hugging Face InstantX/InstantID (research and non-commercial use only)",
    "controlnet": "the IdentityNet: ControlNetModel/ (config.json + diffusion_pytorch_model.safetensors) from "
                  "Hugging Face InstantX/InstantID",
    "checkpoints": "an SDXL checkpoint (SDXL base 1.0 or a fine-tune of it)",
    "insightface": "the antelopev2 models (scrfd_10g_bnkps.onnx and glintr100.onnx, non-commercial research use "
                   "only) in models/insightface/models/antelopev2/",
}


# GGUF transformers live in the diffusion model folders, but ComfyUI's own list of that folder shows
# only the formats its loaders read; "unet_gguf" is the name the ComfyUI-GGUF pack gives the same folders.
GGUF_FOLDER = "unet_gguf"


def register_folders() -> None:
    """models/instantcharacter/, models/instantid/ and models/insightface/ (plus any path
    extra_model_paths.yaml gave those names), and the diffusion model folders once more for .gguf files."""
    for name in (INSTANTCHARACTER_FOLDER, INSTANTID_FOLDER, INSIGHTFACE_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        folder_paths.folder_names_and_paths[name][1].update(ADAPTER_EXTENSIONS)
    for path in folder_paths.get_folder_paths("diffusion_models"):
        folder_paths.add_model_folder_path(GGUF_FOLDER, path)
    folder_paths.folder_names_and_paths[GGUF_FOLDER][1].add(".gguf")


def _folders_with(kind: str, marker: str, depth: int = 3) -> list[str]:
    """Sub-folders of a model folder (any of its paths) that hold `marker`, as relative names."""
    found = set()
    for base in folder_paths.get_folder_paths(kind) if kind in folder_paths.folder_names_and_paths else []:
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            relative = os.path.relpath(root, base)
            if relative.count(os.sep) >= depth:
                dirs.clear()
                continue
            if marker in files and relative != ".":
                found.add(relative.replace(os.sep, "/"))
                dirs.clear()          # a model folder's own sub-folders are its parts
    return sorted(found)


def find_folder(kind: str, name: str) -> str:
    for base in folder_paths.get_folder_paths(kind):
        candidate = os.path.join(base, *name.split("/"))
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(f"{kind}: no folder {name!r} in {', '.join(folder_paths.get_folder_paths(kind))}; "
                            f"it should hold {WHERE_TO_GET.get(kind, 'the model')}")


def find_file(kinds: tuple[str, ...], name: str) -> str:
    for kind in kinds:
        if kind in folder_paths.folder_names_and_paths:
            path = folder_paths.get_full_path(kind, name)
            if path:
                return path
    places = [path for kind in kinds if kind in folder_paths.folder_names_and_paths
              for path in folder_paths.get_folder_paths(kind)]
    raise FileNotFoundError(f"{name!r} is not in {', '.join(places)}; get {WHERE_TO_GET.get(kinds[0], 'it')} "
                            "and put it there")


def files_of(kinds: tuple[str, ...], extensions: tuple[str, ...]) -> list[str]:
    names = set()
    for kind in kinds:
        if kind in folder_paths.folder_names_and_paths:
            names.update(name for name in folder_paths.get_filename_list(kind) if name.lower().endswith(extensions))
    return sorted(names)


def or_none(options: list[str]) -> list[str]:
    return options or [NONE_FOUND]


def flux_model_options() -> list[str]:
    folders = [name + FOLDER_SUFFIX for name in _folders_with("diffusers", "model_index.json")]
    return or_none(folders + files_of(("diffusion_models", GGUF_FOLDER), FLUX_FILE_EXTENSIONS))


def vae_options() -> list[str]:
    return [FROM_FOLDER, *files_of(("vae",), (".safetensors", ".sft"))]


def text_encoder_options() -> list[str]:
    return [FROM_FOLDER, *files_of(("text_encoders",), (".safetensors", ".sft"))]


def image_encoder_options() -> list[str]:
    return or_none(_folders_with("clip_vision", "config.json"))


def adapter_options() -> list[str]:
    return or_none(files_of((INSTANTCHARACTER_FOLDER,), tuple(ADAPTER_EXTENSIONS)))


def sdxl_model_options() -> list[str]:
    folders = [name + FOLDER_SUFFIX for name in _folders_with("diffusers", "model_index.json")]
    return or_none(files_of(("checkpoints",), (".safetensors", ".sft")) + folders)


def identitynet_options() -> list[str]:
    folders = [name + FOLDER_SUFFIX for name in _folders_with("controlnet", "config.json")]
    return or_none(folders + files_of(("controlnet",), (".safetensors",)))


def instantid_adapter_options() -> list[str]:
    return or_none(files_of((INSTANTID_FOLDER,), tuple(ADAPTER_EXTENSIONS)))


def lora_options() -> list[str]:
    return files_of(("loras",), (".safetensors",))


def antelopev2_options() -> list[str]:
    """Folders of models/insightface that hold the antelopev2 files (a nested antelopev2/antelopev2/
    counts as its outer folder), e.g. 'models/antelopev2'."""
    from ..pipelines.local.faces import DETECTOR_FILE

    found = set()
    for base in folder_paths.get_folder_paths(INSIGHTFACE_FOLDER):
        if not os.path.isdir(base):
            continue
        for root, dirs, names in os.walk(base, followlinks=True):
            relative = os.path.relpath(root, base).replace(os.sep, "/")
            if relative.count("/") >= 3:
                dirs.clear()
            elif DETECTOR_FILE in names and relative != ".":
                parent, _, leaf = relative.rpartition("/")
                nested = parent and parent.rpartition("/")[2] == leaf
                found.add(parent if nested else relative)
    return or_none(sorted(found))


def tokenizer_folders() -> tuple[str, str]:
    """The CLIP and T5 tokenizers every ComfyUI ships (comfy/sd1_tokenizer, comfy/text_encoders/t5_tokenizer)."""
    import comfy

    root = list(comfy.__path__)[0]          # comfy is a namespace package (no __file__)
    return os.path.join(root, "sd1_tokenizer"), os.path.join(root, "text_encoders", "t5_tokenizer")
