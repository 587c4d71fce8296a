"""What makes a rerun cheap, shared by the local pipelines: a small LRU cache (it lives on a
pipeline object, never in a module global) and the content key of an image."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Hashable

from PIL import Image


class LRU(OrderedDict):
    """A small least-recently-used cache."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def fetch(self, key: Hashable, make: Callable[[], Any]):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


def image_key(image: Image.Image) -> str:
    """Content hash of an image (pixels and size), the key of every per-image cache."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(rgb.tobytes())
    digest.update(repr(rgb.size).encode())
    return digest.hexdigest()
