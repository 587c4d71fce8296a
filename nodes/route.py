"""Local or cloud, decided once per run: the route node takes a local generator's outputs and a cloud
generator's outputs as lazy inputs, so when it runs neither branch has run yet. It decides then —
once — and hands ComfyUI the chosen branch's outputs as its own (ComfyUI's node expansion): ComfyUI
runs that branch and nothing of the other, which costs neither credits nor VRAM.

Deciding in one place, once, is what keeps the answer the one reported: a local run that fills the
GPU cannot turn the decision into "cloud" halfway and bill the other branch too.

`auto` picks local when everything the local branch needs is there (its loaders' files, see
availability.py) and the GPU has the free memory asked for; cloud otherwise. `local` / `cloud` force a
branch. The choice and its reason come out as text and under the node, the moment it is made.
"""
from __future__ import annotations

import json

from comfy_api.latest import io

from .availability import blockers, is_link, upstream
from .common import CATEGORY_ROOT, node_id

BRANCH_INPUTS = ("images", "info")


def gpu_reading() -> tuple[str, float | None]:
    """The compute device ComfyUI uses and its free memory in GB (None on the CPU)."""
    import comfy.model_management as mm

    device = mm.get_torch_device()
    if device.type == "cpu":
        return "cpu", None
    return str(device), mm.get_free_memory(device) / 2**30


def decide(prefer: str, min_free_vram_gb: float, prompt: dict | None, route_id: str | None):
    """The facts ComfyUI knows (what the local branch lacks, the device and its free memory) → a Route."""
    from ..pipelines.routing import choose_branch

    if prefer != "auto":
        return choose_branch(prefer, min_free_vram_gb, [], "cpu", None)
    prompt, route_id = prompt or {}, route_id or ""
    local_nodes = list(dict.fromkeys(node for name in BRANCH_INPUTS
                                     for node in upstream(prompt, route_id, f"local_{name}")))
    missing = blockers(prompt, local_nodes)
    device, free = gpu_reading() if not missing else ("cpu", None)
    return choose_branch(prefer, min_free_vram_gb, missing, device, free)


class RouteLocalOrCloud(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("RouteLocalOrCloud"), display_name="Local or Cloud (route)", category=CATEGORY_ROOT,
            description="Runs only one of two branches: the local generator when its model files are present and "
                        "the GPU has enough free memory (or when forced), the cloud generator otherwise. The other "
                        "branch never runs: no credits, no VRAM. Decides once, when it runs, and says which it "
                        "chose and why.",
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
                     io.String.Output(display_name="info", tooltip="The chosen generator's info."),
                     io.String.Output(display_name="route", tooltip="Which branch ran, and why.")],
            hidden=[io.Hidden.prompt, io.Hidden.dynprompt, io.Hidden.unique_id],
            enable_expand=True,
        )

    @classmethod
    def fingerprint_inputs(cls, prefer, min_free_vram_gb, **_links):
        # auto decides at every run (files added, memory freed): never a cached decision. The chosen
        # branch's own nodes stay cached as ComfyUI caches them.
        return float("nan") if prefer == "auto" else prefer

    # No check_lazy_status: ComfyUI asks it again after every input it evaluates, and a second answer
    # would be a second decision. The lazy inputs stay unevaluated; execute links the chosen ones.

    @classmethod
    def execute(cls, prefer, min_free_vram_gb, **_unevaluated_branches) -> io.NodeOutput:
        route_id, dynprompt = cls.hidden.unique_id, cls.hidden.dynprompt
        node = dynprompt.get_node(route_id) if dynprompt is not None else (cls.hidden.prompt or {}).get(route_id, {})
        route = decide(prefer, min_free_vram_gb, cls.hidden.prompt, route_id)
        text = f"{route.branch}: {route.reason}"
        images, info = (node.get("inputs", {}).get(f"{route.branch}_{name}") for name in BRANCH_INPUTS)
        if not is_link(images):
            raise ValueError(f"route: chose {text}, but nothing is connected to {route.branch}_images; connect "
                             f"the {route.branch} generator's images and info")
        _show(dynprompt.get_display_node_id(route_id) if dynprompt is not None else route_id, text)
        # The chosen generator's outputs become this node's outputs: ComfyUI runs that branch (and only
        # that one) before anything downstream of the route reads them.
        info = [str(info[0]), info[1]] if is_link(info) else json.dumps({"route": {"branch": route.branch,
                                                                                    "reason": route.reason}})
        return io.NodeOutput([str(images[0]), images[1]], info, text, expand={})


def _show(node: str | None, text: str) -> None:
    from server import PromptServer

    if node is not None and PromptServer.instance is not None:
        PromptServer.instance.send_progress_text(text, node)


ROUTE_NODES = [RouteLocalOrCloud]
