#!/usr/bin/env bash
# start.sh — set everything up (idempotent) and start ComfyUI with the pack at http://127.0.0.1:8188
#   environment: PORT (8188), LISTEN (127.0.0.1), COMFYUI_ARGS (extra ComfyUI flags),
#     COMFYUI_DIR (default <repo>/.comfyui), COMFYUI_SOURCE_DIR (start this ComfyUI tree instead of
#     the PyPI-carried 0.3.75; give it its own COMFYUI_DIR — see install_comfyui.sh)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export COMFYUI_DIR="${COMFYUI_DIR:-$REPO_ROOT/.comfyui}"
bash "$REPO_ROOT/scripts/setup.sh"

DEVICE_ARGS=()
# Use the GPU when torch sees one; otherwise run on the CPU instead of failing at start-up.
"$COMFYUI_DIR/venv/bin/python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null \
  || DEVICE_ARGS=(--cpu)
HOME_DIR="$COMFYUI_DIR/home"
mkdir -p "$HOME_DIR/user"
cd "$COMFYUI_DIR/ComfyUI"
echo "[start] ComfyUI at http://${LISTEN:-127.0.0.1}:${PORT:-8188}  (Ctrl-C stops it)"
# ComfyUI keeps its database next to its code unless told otherwise; keep it in the home folder.
# shellcheck disable=SC2086  # COMFYUI_ARGS is a list of flags on purpose
exec "$COMFYUI_DIR/venv/bin/python" main.py "${DEVICE_ARGS[@]}" \
  --listen "${LISTEN:-127.0.0.1}" --port "${PORT:-8188}" \
  --base-directory "$HOME_DIR" --database-url "sqlite:///$HOME_DIR/user/comfyui.db" \
  --disable-auto-launch ${COMFYUI_ARGS:-}
