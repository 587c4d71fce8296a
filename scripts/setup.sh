#!/usr/bin/env bash
# setup.sh — everything the pack needs, idempotent: ComfyUI (scripts/install_comfyui.sh), the
# pack's requirements in ComfyUI's venv, and the pack linked into ComfyUI's custom_nodes.
#
#   usage: scripts/setup.sh [--test]
#     --test   also the test tools (pyproject's [test] extra) and Debian's chromium for browser tests
#   environment: COMFYUI_DIR (default <repo>/.comfyui), plus install_comfyui.sh's variables
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export COMFYUI_DIR="${COMFYUI_DIR:-$REPO_ROOT/.comfyui}"
PACK_NAME="comfyui-character-identity"
WITH_TESTS=0
[ "${1:-}" = "--test" ] && WITH_TESTS=1

bash "$REPO_ROOT/scripts/install_comfyui.sh" "$COMFYUI_DIR"
# install_comfyui.sh wrote the constraints in force for this ComfyUI (scripts/constraints.txt less
# what the ComfyUI tree pins otherwise): the pack and the test tools must not undo the tree's pins

PY="$COMFYUI_DIR/venv/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check --quiet)
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
step() { printf '[setup] %s\n' "$*"; }

step "pack requirements (requirements.txt) into ComfyUI's venv"
"${PIP[@]}" install -c "$COMFYUI_DIR/constraints.txt" -r "$REPO_ROOT/requirements.txt" "torch==$TORCH_VERSION"
step "OpenCV and onnxruntime for face analysis, unless a build is there (install.py, as ComfyUI-Manager runs it)"
PIP_CONSTRAINT="$COMFYUI_DIR/constraints.txt" "$PY" "$REPO_ROOT/install.py"

# The user-facing home of this ComfyUI: custom_nodes/, models/, input/, output/, user/.
HOME_DIR="$COMFYUI_DIR/home"
mkdir -p "$HOME_DIR/custom_nodes"
ln -sfn "$REPO_ROOT" "$HOME_DIR/custom_nodes/$PACK_NAME"

if [ "$WITH_TESTS" = 1 ]; then
  step "test tools (pyproject.toml [project.optional-dependencies] test)"
  "$PY" - "$REPO_ROOT/pyproject.toml" > "$COMFYUI_DIR/downloads/test-requirements.txt" <<'PYEOF'
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip (in every venv) carries the same parser as tomli
    from pip._vendor import tomli as tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["test"]))
PYEOF
  "${PIP[@]}" install -c "$COMFYUI_DIR/constraints.txt" -r "$COMFYUI_DIR/downloads/test-requirements.txt" "torch==$TORCH_VERSION"
  # insightface is the oracle the face analysis is compared with; its declared opencv-python would
  # clash with the headless build, so it comes without its dependencies (the ones it uses are in [test])
  "${PIP[@]}" install -c "$COMFYUI_DIR/constraints.txt" --no-deps "insightface==2.1"
  # the newest frontend too (the browser tests run on both it and the one ComfyUI 0.3.75 ships, with
  # Vue nodes on): the newest on PyPI when this was written; raise the pin to test a newer one
  NEWEST_FRONTEND="1.58.1"
  FRONTEND_DIR="$COMFYUI_DIR/frontend-newest"
  if [ ! -f "$FRONTEND_DIR/$NEWEST_FRONTEND/index.html" ]; then
    step "comfyui-frontend-package $NEWEST_FRONTEND (unpacked only, for the browser tests)"
    rm -rf "$FRONTEND_DIR" && mkdir -p "$FRONTEND_DIR/wheel"
    "${PIP[@]}" download --no-deps --only-binary=:all: -d "$FRONTEND_DIR/wheel" "comfyui-frontend-package==$NEWEST_FRONTEND"
    "$PY" - "$FRONTEND_DIR" "$NEWEST_FRONTEND" <<'PYEOF'
import pathlib, shutil, sys, zipfile
folder, version = pathlib.Path(sys.argv[1]), sys.argv[2]
[wheel] = (folder / "wheel").glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    archive.extractall(folder / "unpacked")
shutil.move(str(folder / "unpacked" / "comfyui_frontend_package" / "static"), str(folder / version))
shutil.rmtree(folder / "unpacked")
shutil.rmtree(folder / "wheel")
PYEOF
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    step "Debian chromium for the browser tests (Playwright drives it; it never downloads a browser)"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "[setup] ERROR: chromium is missing; install it with: sudo apt-get install chromium" >&2
      exit 1
    fi
  fi
fi
step "ready: ComfyUI in $COMFYUI_DIR, pack linked as $HOME_DIR/custom_nodes/$PACK_NAME"
