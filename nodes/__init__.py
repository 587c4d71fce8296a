"""ComfyUI adapter: thin V3 nodes over `pipelines/`."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .cloud import CLOUD_NODES
from .compare import COMPARE_NODES
from .face_nodes import FACE_NODES
from .first_run import install_example_reference
from .instantid import INSTANTID_NODES
from .local import LOCAL_NODES
from .model_files import register_folders
from .native_instantcharacter import NATIVE_INSTANTCHARACTER_NODES
from .native_instantid import NATIVE_INSTANTID_NODES
from .reference import PrepareCharacterReference
from .route import ROUTE_NODES
from .web_routes import register_routes


class CharacterIdentityExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_folders()          # before the schemas list the model folders
        register_routes()
        install_example_reference()  # the example the shipped workflows load, never over a user's file
        return [PrepareCharacterReference, *CLOUD_NODES, *LOCAL_NODES, *NATIVE_INSTANTCHARACTER_NODES, *INSTANTID_NODES, *NATIVE_INSTANTID_NODES, *FACE_NODES, *ROUTE_NODES, *COMPARE_NODES]
