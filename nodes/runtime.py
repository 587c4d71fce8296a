"""Running a pipelines backend inside ComfyUI: progress text and bar on the node, ComfyUI's Cancel,
IMAGE conversion, and the info JSON. Shared by every image-producing node."""
from __future__ import annotations

import json
import logging
import os

import comfy.model_management
import comfy.utils
import folder_paths

from ..pipelines import GenerationInterrupted, GenerationRequest, pil_to_image_batch
from ..pipelines.contract import GenerationBackend

log = logging.getLogger("character_identity")


class ComfyRunContext:
    """RunContext over ComfyUI: text under the node, its progress bar, and the interrupt flag."""

    def __init__(self, node_id: str | None):
        self.node_id = node_id
        self.bar: comfy.utils.ProgressBar | None = None
        self.cancel_seen = False

    def report_status(self, text: str) -> None:
        from server import PromptServer      # ComfyUI's server module, present whenever nodes run

        if self.node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)

    def report_progress(self, done: float, total: float) -> None:
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        try:
            self.bar.update_absolute(done, total)
        except comfy.model_management.InterruptProcessingException:
            # ComfyUI's progress hook clears its interrupt flag before raising this, so the Cancel
            # must be remembered here or it is lost (and a billable submit would go out next)
            self.cancel_seen = True

    def interrupted(self) -> bool:
        return self.cancel_seen or comfy.model_management.processing_interrupted()


def pack_state_dir() -> str:
    """Where the pack keeps state (the upload cache): a ComfyUI system-user folder, which ComfyUI
    never serves over HTTP."""
    if hasattr(folder_paths, "get_system_user_directory"):
        return folder_paths.get_system_user_directory("character_identity")
    return os.path.join(folder_paths.get_user_directory(), "__character_identity")


async def generate(backend: GenerationBackend, request: GenerationRequest, node_id: str | None):
    """Run the backend; returns (IMAGE batch, info JSON text). Cancel becomes ComfyUI's interrupt."""
    context = ComfyRunContext(node_id)
    try:
        result = await backend.generate(request, context)
    except GenerationInterrupted:
        context.report_status("cancelled")
        raise comfy.model_management.InterruptProcessingException() from None
    info = result.info()
    flagged = sum(result.safety_flags)
    summary = f"{result.backend}: {len(result.images)} image(s)"
    if result.job_id:
        summary += f", job {result.job_id}"
    if flagged:
        summary += f", {flagged} flagged by the provider's safety checker"
    context.report_status(summary)
    log.info("[Character Identity] %s in %.1f s", summary, result.timings.get("total", 0.0))
    return pil_to_image_batch(result.images), json.dumps(info, indent=2)
