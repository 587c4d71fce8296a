#!/usr/bin/env bash
# test.sh — set everything up for testing (idempotent) and run the whole test suite.
#   extra arguments go to pytest, e.g. scripts/test.sh -k prepare
#   artifacts (screenshots, server logs) land in test-artifacts/
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export COMFYUI_DIR="${COMFYUI_DIR:-$REPO_ROOT/.comfyui}"
bash "$REPO_ROOT/scripts/setup.sh" --test
cd "$REPO_ROOT"
exec "$COMFYUI_DIR/venv/bin/python" -m pytest "$@"
