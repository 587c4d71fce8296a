"""Run by ComfyUI-Manager after `pip install -r requirements.txt` (or by hand with ComfyUI's Python).

Local InstantID's face analysis needs OpenCV and onnxruntime. Both come in several builds that
install the same module (opencv-python / opencv-python-headless / opencv-contrib-python;
onnxruntime / onnxruntime-gpu), and installing a second build over the first breaks the packs that
use it. So nothing is added when a build is already there; otherwise the CPU build is installed:
opencv-python-headless and onnxruntime (wheels only).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

NEEDED = {"cv2": "opencv-python-headless", "onnxruntime": "onnxruntime"}


def main() -> int:
    missing = [package for module, package in NEEDED.items() if importlib.util.find_spec(module) is None]
    if not missing:
        print("[Character Identity] OpenCV and onnxruntime are present; nothing to install")
        return 0
    print(f"[Character Identity] installing {', '.join(missing)}")
    return subprocess.call([sys.executable, "-m", "pip", "install", "--only-binary=:all:", *missing])


if __name__ == "__main__":
    sys.exit(main())
