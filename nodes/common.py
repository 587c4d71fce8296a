"""Naming shared by every node of the pack: id prefix and category tree."""

# Every node id starts with this, so it never collides with another pack's node.
NODE_ID_PREFIX = "CharID"

CATEGORY_ROOT = "Character Identity"
CATEGORY_REFERENCE = f"{CATEGORY_ROOT}/Reference"
CATEGORY_LOCAL = f"{CATEGORY_ROOT}/Local"
CATEGORY_CLOUD = f"{CATEGORY_ROOT}/Cloud"


def node_id(name: str) -> str:
    return NODE_ID_PREFIX + name
