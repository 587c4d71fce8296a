"""Character Identity: identity-preserving character generation for ComfyUI.

ComfyUI loads this package from custom_nodes/. Importing it is deliberately cheap: the node
modules are imported when ComfyUI asks for the node list, and nothing heavier than torch and
PIL (both already loaded by ComfyUI) is imported until a node runs.
"""

# Browser extension, served by ComfyUI at /extensions/<folder name>/.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import CharacterIdentityExtension

    return CharacterIdentityExtension()
