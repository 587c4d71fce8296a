"""The pack's model folders, through ComfyUI's folder_paths (so extra_model_paths.yaml works):
which files and Hugging Face folders a user has, and where a chosen name lives.

Two rules for the loaders' file inputs:
- at queue time a name is refused only when it could leave the model folders (`unsafe_name`); a
  plain name the user does not have (a shared workflow's file, "(none found)") queues, so a graph
  whose local branch never runs is not refused for it;
- when a loader runs, only a name in its folder's current list is opened (`listed_file`,
  `listed_folder`); anything else is a FileNotFoundError that names the input, the file, the folders
  searched and where to get it.
"""
from __future__ import annotations

import os
import re

import folder_paths

INSTANTCHARACTER_FOLDER = "instantcharacter"
INSTANTID_FOLDER = "instantid"
INSIGHTFACE_FOLDER = "insightface"       # the name the popular InstantID packs give models/insightface
ADAPTER_EXTENSIONS = {".bin", ".safetensors"}
FLUX_FILE_EXTENSIONS = (".safetensors", ".sft", ".gguf")
CHECKPOINT_EXTENSIONS = (".safetensors", ".sft")
FOLDER_SUFFIX = " (diffusers folder)"
CHECKPOINT_SUFFIX = " (all-in-one checkpoint)"
FROM_MODEL = "(from flux_model)"
FROM_MODEL_VALUES = (FROM_MODEL, "(from the diffusers folder)")      # the second: workflows saved before
NONE_FOUND = "(none found)"
# where users get each file, for the errors that name a missing one
WHERE_TO_GET = {
    "instantcharacter": "instantcharacter_ip-adapter.bin from Hugging Face Tencent/InstantCharacter "
                        "(research and non-commercial use only)",
    "diffusion_models": "flux1-dev.safetensors (or an fp8 / GGUF conversion) from Hugging Face "
                        "black-forest-labs/FLUX.1-dev (FLUX.1 [dev] Non-Commercial License), or Comfy-Org's "
                        "all-in-one flux1-dev-fp8.safetensors into models/checkpoints",
    "vae": "ae.safetensors from Hugging Face black-forest-labs/FLUX.1-dev",
    "text_encoders": "clip_l.safetensors and t5xxl_fp16.safetensors from Hugging Face comfyanonymous/flux_text_encoders",
    "clip_vision": "the Hugging Face folders google/siglip-so400m-patch14-384 and facebook/dinov2-giant",
    "diffusers": "the Hugging Face folder black-forest-labs/FLUX.1-dev",
    "instantid": "ip-adapter.bin from Hugging Face InstantX/InstantID (research and non-commercial use only)",
    "controlnet": "the IdentityNet: ControlNetModel/ (config.json + diffusion_pytorch_model.safetensors) from "
                  "Hugging Face InstantX/InstantID",
    "checkpoints": "an SDXL checkpoint (SDXL base 1.0 or a fine-tune of it)",
    "loras": "the LoRA file",
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


# ---- names that could leave the model folders -------------------------------------------------

def unsafe_name(value: str) -> str | None:
    """Why a chosen name could point outside the model folders (None: it cannot). Both separators
    count, since Windows reads a backslash as one."""
    if "\x00" in value:
        return "it holds a NUL character"
    if value.startswith(("/", "\\")):
        return "it is an absolute path"
    if re.match(r"^[A-Za-z]:", value):
        return "it names a drive"
    if any(part == ".." for part in re.split(r"[\\/]", value)):
        return "it steps out of the folder with '..'"
    return None


def check_names(values: dict[str, str | None]) -> list[str]:
    """Queue-time problems of the chosen names, one line per input. A linked input (None here; its
    value is known only when the graph runs) is checked when the loader runs."""
    problems = []
    for name, value in values.items():
        if isinstance(value, str) and (reason := unsafe_name(value)):
            problems.append(f"{name}: {value!r} is not a name from the model folders ({reason}); choose one from "
                            "the list")
    return problems


# ---- listing -----------------------------------------------------------------------------------

def folders_with(kind: str, marker: str, depth: int = 3) -> list[str]:
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


def files_of(kinds: tuple[str, ...], extensions: tuple[str, ...]) -> list[str]:
    names = set()
    for kind in kinds:
        if kind in folder_paths.folder_names_and_paths:
            names.update(name for name in folder_paths.get_filename_list(kind) if name.lower().endswith(extensions))
    return sorted(names)


def or_none(options: list[str]) -> list[str]:
    return options or [NONE_FOUND]


def flux_checkpoints() -> list[str]:
    """The FLUX all-in-one checkpoints in models/checkpoints (recognised by their header's tensor names)."""
    from ..pipelines.local.model_kinds import is_flux_checkpoint

    found = []
    for name in files_of(("checkpoints",), CHECKPOINT_EXTENSIONS):
        path = folder_paths.get_full_path("checkpoints", name)
        if path and is_flux_checkpoint(path):
            found.append(name)
    return found


def diffusers_folders(pipeline: str) -> list[str]:
    """The diffusers folders whose model_index.json names a pipeline class containing `pipeline`
    ("Flux", "XL"); a folder whose index cannot be read is listed (its loader says what is wrong)."""
    import json

    found = []
    for name in folders_with("diffusers", "model_index.json"):
        for base in folder_paths.get_folder_paths("diffusers"):
            index = os.path.join(base, *name.split("/"), "model_index.json")
            if os.path.isfile(index):
                try:
                    with open(index, encoding="utf-8") as handle:
                        kind = str(json.load(handle).get("_class_name", ""))
                except (OSError, ValueError):
                    kind = pipeline
                if pipeline in kind:
                    found.append(name)
                break
    return found


def flux_model_options() -> list[str]:
    folders = [name + FOLDER_SUFFIX for name in diffusers_folders("Flux")]
    checkpoints = [name + CHECKPOINT_SUFFIX for name in flux_checkpoints()]
    return or_none(folders + files_of(("diffusion_models", GGUF_FOLDER), FLUX_FILE_EXTENSIONS) + checkpoints)


def vae_options() -> list[str]:
    return [FROM_MODEL, *files_of(("vae",), CHECKPOINT_EXTENSIONS)]


def text_encoder_options() -> list[str]:
    return [FROM_MODEL, *files_of(("text_encoders",), CHECKPOINT_EXTENSIONS)]


def image_encoder_options() -> list[str]:
    return or_none(folders_with("clip_vision", "config.json"))


def adapter_options() -> list[str]:
    return or_none(files_of((INSTANTCHARACTER_FOLDER,), tuple(ADAPTER_EXTENSIONS)))


def sdxl_model_options() -> list[str]:
    folders = [name + FOLDER_SUFFIX for name in diffusers_folders("XL")]
    return or_none(files_of(("checkpoints",), CHECKPOINT_EXTENSIONS) + folders)


def identitynet_options() -> list[str]:
    folders = [name + FOLDER_SUFFIX for name in folders_with("controlnet", "config.json")]
    return or_none(folders + files_of(("controlnet",), (".safetensors",)))


def instantid_adapter_options() -> list[str]:
    return or_none(files_of((INSTANTID_FOLDER,), tuple(ADAPTER_EXTENSIONS)))


def lora_options() -> list[str]:
    return files_of(("loras",), (".safetensors",))


def antelopev2_options() -> list[str]:
    return or_none(antelopev2_folders())


def antelopev2_folders() -> list[str]:
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
    return sorted(found)


# ---- resolving a chosen name (only what is listed) ------------------------------------------------

def places(kinds: tuple[str, ...]) -> str:
    return ", ".join(path for kind in kinds if kind in folder_paths.folder_names_and_paths
                     for path in folder_paths.get_folder_paths(kind))


def missing(input_name: str, value, kinds: tuple[str, ...], what: str = "file") -> FileNotFoundError:
    """The error for a name that is not in its folders' list: the input, the name, where it was
    looked for and where to get it."""
    where = WHERE_TO_GET.get(kinds[0], "it")
    if value is None or value == NONE_FOUND:
        return FileNotFoundError(f"{input_name}: no {what} found in {places(kinds)}; get {where} and put it there")
    return FileNotFoundError(f"{input_name}: {value!r} is not in {places(kinds)}; get {where} and put it there")


def listed_file(input_name: str, value, kinds: tuple[str, ...], extensions: tuple[str, ...]) -> str:
    """The path of a listed file; FileNotFoundError (naming everything) for any other name."""
    if isinstance(value, str) and value in files_of(kinds, extensions):
        for kind in kinds:
            path = folder_paths.get_full_path(kind, value) if kind in folder_paths.folder_names_and_paths else None
            if path:
                return path
    raise missing(input_name, value, kinds)


def listed_folder(input_name: str, value, kind: str, names: list[str]) -> str:
    """The path of a listed folder (`names`: its folder's current list)."""
    if isinstance(value, str) and value in names:
        for base in folder_paths.get_folder_paths(kind):
            candidate = os.path.join(base, *value.split("/"))
            if os.path.isdir(candidate):
                return candidate
    raise missing(input_name, value, (kind,), "folder")


def find_file(kinds: tuple[str, ...], name: str) -> str:
    """A file by name through ComfyUI's folder_paths (which keeps it inside the folders)."""
    for kind in kinds:
        if kind in folder_paths.folder_names_and_paths:
            path = folder_paths.get_full_path(kind, name)
            if path:
                return path
    raise FileNotFoundError(f"{name!r} is not in {places(kinds)}; get {WHERE_TO_GET.get(kinds[0], 'it')} "
                            "and put it there")


def resolve_all(resolvers: dict) -> tuple[dict, list[str]]:
    """Run each input's resolver; returns (input → path for those found, the lines of those missing)."""
    found, lines = {}, []
    for name, resolve in resolvers.items():
        try:
            found[name] = resolve()
        except FileNotFoundError as exc:
            lines.append(str(exc))
    return found, lines


def tokenizer_folders() -> tuple[str, str]:
    """The CLIP and T5 tokenizers every ComfyUI ships (comfy/sd1_tokenizer, comfy/text_encoders/t5_tokenizer)."""
    import comfy

    root = list(comfy.__path__)[0]          # comfy is a namespace package (no __file__)
    return os.path.join(root, "sd1_tokenizer"), os.path.join(root, "text_encoders", "t5_tokenizer")


class InputProblems(ValueError):
    """Problems of a loader's inputs, one line each, every line starting with its input's name.

    Raised (not returned) from validate_inputs on purpose: ComfyUI repeats a returned message under
    every input validate_inputs takes (all of a loader's file inputs), while a raised one is
    reported once for the node."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines
