"""Can this generator run here? The one answer the route and the compare node both use, read from the
prompt before anything runs: a cloud generator needs its provider's key (only *whether* there is one
is looked at, never the key), a local generator needs every file its loaders name (each loader's own
`plan` checks them, with the text the loader itself would fail with).

Asking costs no credits and loads no weights, so a node can leave out what cannot run instead of
letting one missing key or file fail the whole prompt.
"""
from __future__ import annotations


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))


def upstream(prompt: dict, start: str, input_name: str | None = None) -> list[str]:
    """Every node `start` depends on (only through `input_name` when given), breadth first, by id."""
    inputs = prompt.get(start, {}).get("inputs", {})
    links = [inputs.get(input_name)] if input_name is not None else list(inputs.values())
    seen, queue = [], [str(link[0]) for link in links if is_link(link)]
    while queue:
        current = queue.pop(0)
        if current in seen or current not in prompt:
            continue
        seen.append(current)
        queue += [str(value[0]) for value in prompt[current].get("inputs", {}).values() if is_link(value)]
    return seen


def _cloud_providers() -> dict:
    """Cloud generator node id → its provider's backend class (which names the key it needs)."""
    from ..pipelines.cloud import PROVIDERS
    from .cloud import CLOUD_NODES

    return {node.define_schema().node_id: PROVIDERS[node.PROVIDER] for node in CLOUD_NODES}


def _loaders() -> dict:
    """Loader node id → the class whose `plan(**widgets)` checks its files."""
    from .common import node_id
    from .face_nodes import FaceModelsLoader
    from .instantid import InstantIDLoader
    from .local import InstantCharacterLoader

    return {node_id("InstantCharacterLoader"): InstantCharacterLoader, node_id("InstantIDLoader"): InstantIDLoader,
            node_id("FaceModelsLoader"): FaceModelsLoader}


def _own_blocker(entry: dict, providers: dict, loaders: dict) -> str | None:
    """What keeps this one node from running, or None (also when it cannot be known before it runs)."""
    from ..pipelines.cloud import KeySource

    class_type = entry.get("class_type")
    if class_type in providers:
        backend = providers[class_type]
        if KeySource().source_of(backend.key_env) is None:
            return (f"no {backend.company} API key: set {backend.key_env} in the environment or in the keys file "
                    "(README: API keys)")
        return None
    loader = loaders.get(class_type)
    if loader is None:
        return None
    widgets = {name: value for name, value in entry.get("inputs", {}).items() if not is_link(value)}
    try:
        loader.plan(**widgets)
    except TypeError:
        return None             # a file name comes from another node: only the loader itself can tell
    except (OSError, ValueError) as exc:      # FileNotFoundError, ModelFileError, FaceAnalysisError
        return str(exc).splitlines()[0][:300]
    return None


def blockers(prompt: dict, nodes: list[str]) -> list[str]:
    """One line per node of `nodes` that cannot run here: "node <id>: <why>"."""
    providers, loaders = _cloud_providers(), _loaders()
    found = []
    for node in nodes:
        reason = _own_blocker(prompt.get(node, {}), providers, loaders)
        if reason:
            found.append(f"node {node}: {reason}")
    return found


def unavailable(prompt: dict, node: str) -> str | None:
    """Why the node `node` cannot run here — itself or anything it depends on — or None."""
    return "; ".join(blockers(prompt, [node, *upstream(prompt, node)])) or None


def unavailable_input(prompt: dict, node: str, input_name: str) -> str | None:
    """Why what feeds `node`'s input `input_name` cannot run here, or None."""
    return "; ".join(blockers(prompt, upstream(prompt, node, input_name))) or None
