"""Running a pipelines backend inside ComfyUI: progress text and bar on the node, ComfyUI's Cancel,
IMAGE conversion, and the info JSON. Shared by every image-producing node."""
from __future__ import annotations

import asyncio
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
        self._previewer = None          # built on the first preview; False when previews are off

    def report_status(self, text: str) -> None:
        from server import PromptServer      # ComfyUI's server module, present whenever nodes run

        if self.node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)

    def report_progress(self, done: float, total: float, preview=None) -> None:
        """Also called from a local pipeline's worker thread: ComfyUI's progress hook hands its
        messages to the server's event loop thread-safely."""
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        image = self._preview_image(preview) if preview is not None else None
        try:
            self.bar.update_absolute(done, total, image)
        except comfy.model_management.InterruptProcessingException:
            # ComfyUI's progress hook clears its interrupt flag before raising this, so the Cancel
            # must be remembered here or it is lost (and a billable submit would go out next) — and
            # set again for the prompt's other nodes running meanwhile: a local generator waiting
            # for the device must see it before this one gives the device back. (Each prompt
            # starts by clearing the flag, so it cannot reach the next one.)
            self.cancel_seen = True
            comfy.model_management.interrupt_current_processing(True)

    def interrupted(self) -> bool:
        return self.cancel_seen or comfy.model_management.processing_interrupted()

    def _preview_image(self, latents):
        """The step's denoised latents as ComfyUI's preview (its --preview-method decides; off by default)."""
        if self._previewer is None:
            import latent_preview

            self._previewer = latent_preview.get_previewer(latents.device, latent_format_for(latents.shape[1])) or False
        if not self._previewer:
            return None
        return self._previewer.decode_latent_to_preview_image("JPEG", latents[:1].float())


def latent_format_for(channels: int):
    """FLUX's latent format (16 channels); any other count gets a plain channels-to-RGB mapping."""
    import comfy.latent_formats

    flux = comfy.latent_formats.Flux()
    if channels == flux.latent_channels:
        return flux
    generic = comfy.latent_formats.LatentFormat()
    generic.latent_channels = channels
    generic.latent_rgb_factors = [[1.0 / max(1, (channels + 2) // 3) if c % 3 == k else 0.0 for k in range(3)]
                                  for c in range(channels)]
    return generic


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
    except asyncio.CancelledError:
        # ComfyUI ended the prompt (a Cancel, or another node failed) while this node waited or
        # ran: its last text ("waiting for the GPU ...") must not stay on the node
        context.report_status("cancelled" if context.interrupted() else "stopped: the prompt ended (another node failed)")
        raise
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
