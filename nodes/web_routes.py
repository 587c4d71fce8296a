"""The pack's HTTP route for its browser side: which cloud keys are configured and where they come
from (never the keys), and each cloud node's published price, for the estimate shown before Run.

    GET /character_identity/status
"""
from __future__ import annotations

import ipaddress
import sys

STATUS_PATH = "/character_identity/status"


def _is_local(request) -> bool:
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def pack_status(local: bool) -> dict:
    """Key status per provider and pricing per cloud node type. The keys file's path (it names the
    user's home) is given only to the local machine."""
    from ..pipelines.cloud import PROVIDERS, KeySource
    from ..pipelines.cloud import fal as fal_protocol
    from .cloud import CLOUD_NODES

    source = KeySource()
    keys = [{"provider": provider, "name": backend.company, "variable": backend.key_env,
             "source": source.source_of(backend.key_env)}
            for provider, backend in PROVIDERS.items()]
    pricing = {}
    for node in CLOUD_NODES:
        rule = PROVIDERS[node.PROVIDER].price.rule()
        if node.PROVIDER == "fal":
            rule["image_size_presets"] = {name: list(size) for name, size in fal_protocol.IMAGE_SIZE_PRESETS.items()}
        pricing[node.define_schema().node_id] = {"provider": node.PROVIDER, **rule}
    status = {"keys": keys, "pricing": pricing}
    if local:
        status["keys_file"] = str(source.path)
    return status


def register_routes() -> None:
    """Once per server (ComfyUI serves routes added while custom nodes load). Without a running
    ComfyUI server (a script loading the nodes) there is nothing to register, and nothing is imported."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return
    from aiohttp import web

    routes = instance.routes
    if any(getattr(route, "path", None) == STATUS_PATH for route in routes):
        return

    @routes.get(STATUS_PATH)
    async def status(request):
        return web.json_response(pack_status(_is_local(request)), headers={"Cache-Control": "no-store"})
