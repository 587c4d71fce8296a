"""ComfyUI adapter: thin V3 nodes over `pipelines/`."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .cloud import CLOUD_NODES
from .reference import PrepareCharacterReference


class CharacterIdentityExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [PrepareCharacterReference, *CLOUD_NODES]
