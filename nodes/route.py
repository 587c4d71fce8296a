"""Local or cloud, decided at run time: the route node takes a local generator's outputs and a cloud
generator's outputs as lazy inputs and asks ComfyUI for one branch only — so the other costs
neither credits nor VRAM (its nodes never run).

`auto` picks local when every model file the local branch's loaders name is present and the GPU has
the free memory asked for; cloud otherwise. `local` / `cloud` force a branch. The choice and its
reason come out as text, in the info JSON and under the node.
"""
from __future__ import annotations

import json

from comfy_api.latest import io

from .common import CATEGORY_ROOT, node_id

def _loaders() -> dict:
    """Loader node id → the class whose `plan(**widgets)` checks its files."""
    from .face_nodes import FaceModelsLoader
    from .instantid import InstantIDLoader
    from .local import InstantCharacterLoader

    return {node_id("InstantCharacterLoader"): InstantCharacterLoader, node_id("InstantIDLoader"): InstantIDLoader,
            node_id("FaceModelsLoader"): FaceModelsLoader}


def upstream(prompt: dict, start: str, input_name: str) -> list[str]:
    """Every node the given input depends on (breadth first), by id."""
    node = prompt.get(start, {})
    link = node.get("inputs", {}).get(input_name)
    if not (isinstance(link, list) and len(link) == 2):
        return []
    seen, queue = [], [str(link[0])]
    while queue:
        current = queue.pop(0)
        if current in seen or current not in prompt:
            continue
        seen.append(current)
        for value in prompt[current].get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)):
                queue.append(str(value[0]))
    return seen


def missing_local_files(prompt: dict, route_id: str) -> list[str]:
    """What the local branch's loaders would miss, one line per loader (empty: all present)."""
    from ..pipelines.local.faces import FaceAnalysisError
    from ..pipelines.local.weights import ModelFileError

    loaders = _loaders()
    problems = []
    for node in upstream(prompt, route_id, "local_images"):
        entry = prompt[node]
        loader = loaders.get(entry.get("class_type"))
        if loader is None:
            continue
        widgets = {k: v for k, v in entry.get("inputs", {}).items() if not isinstance(v, list)}
        try:
            loader.plan(**widgets)
        except (FileNotFoundError, ModelFileError, FaceAnalysisError, TypeError) as exc:
            problems.append(f"node {node}: {str(exc).splitlines()[0][:300]}")
    return problems


def decide(prefer: str, min_free_vram_gb: float, prompt: dict | None, route_id: str | None):
    """The facts ComfyUI knows (the local branch's files, the device and its free memory) → a Route."""
    import comfy.model_management as mm

    from ..pipelines.routing import choose_branch

    if prefer != "auto":
        return choose_branch(prefer, min_free_vram_gb, [], "cpu", None)
    device = mm.get_torch_device()
    free = mm.get_free_memory(device) / 2**30 if device.type != "cpu" else None
    return choose_branch(prefer, min_free_vram_gb, missing_local_files(prompt or {}, route_id or ""),
                         "cpu" if device.type == "cpu" else str(device), free)


class RouteLocalOrCloud(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("RouteLocalOrCloud"), display_name="Local or Cloud (route)", category=CATEGORY_ROOT,
            description="Runs only one of two branches: the local generator when its model files are present and "
                        "the GPU has enough free memory (or when forced), the cloud generator otherwise. The other "
                        "branch never runs: no credits, no VRAM. Says which it chose and why.",
            inputs=[
                io.Combo.Input("prefer", options=["auto", "local", "cloud"], default="auto",
                               tooltip="auto decides at run time; local or cloud force a branch."),
                io.Float.Input("min_free_vram_gb", default=12.0, min=0.0, max=512.0, step=0.5,
                               tooltip="auto picks local only with at least this much free GPU memory."),
                io.Image.Input("local_images", lazy=True, tooltip="images of the local generator"),
                io.String.Input("local_info", lazy=True, force_input=True, tooltip="info of the local generator"),
                io.Image.Input("cloud_images", lazy=True, tooltip="images of the cloud generator"),
                io.String.Input("cloud_info", lazy=True, force_input=True, tooltip="info of the cloud generator"),
            ],
            outputs=[io.Image.Output(display_name="images"),
                     io.String.Output(display_name="info", tooltip="The chosen generator's info, with the route."),
                     io.String.Output(display_name="route", tooltip="Which branch ran, and why.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def check_lazy_status(cls, prefer, min_free_vram_gb, local_images=None, local_info=None, cloud_images=None,
                          cloud_info=None) -> list[str]:
        route = decide(prefer, min_free_vram_gb, cls.hidden.prompt, cls.hidden.unique_id)
        wanted = ("local_images", "local_info") if route.branch == "local" else ("cloud_images", "cloud_info")
        values = {"local_images": local_images, "local_info": local_info, "cloud_images": cloud_images,
                  "cloud_info": cloud_info}
        return [name for name in wanted if values[name] is None]

    @classmethod
    def execute(cls, prefer, min_free_vram_gb, local_images=None, local_info=None, cloud_images=None,
                cloud_info=None) -> io.NodeOutput:
        branch = "local" if local_images is not None else "cloud"
        route = decide(prefer, min_free_vram_gb, cls.hidden.prompt, cls.hidden.unique_id)
        reason = route.reason if route.branch == branch else f"chosen when the run started ({route.reason} now)"
        images, info = (local_images, local_info) if branch == "local" else (cloud_images, cloud_info)
        if images is None:
            raise ValueError(f"route: the {branch} branch gave no images; connect its generator's images and info")
        try:
            details = json.loads(info) if info else {}
        except json.JSONDecodeError:
            details = {"info": info}
        details["route"] = {"branch": branch, "reason": reason}
        text = f"{branch}: {reason}"
        _show(cls.hidden.unique_id, text)
        return io.NodeOutput(images, json.dumps(details, indent=2), text)


def _show(node: str | None, text: str) -> None:
    from server import PromptServer

    if node is not None and PromptServer.instance is not None:
        PromptServer.instance.send_progress_text(text, node)


ROUTE_NODES = [RouteLocalOrCloud]
