#!/usr/bin/env bash
# The GPU benchmarks in one call, for a session that is lent a GPU machine (which has torch and
# transformers but no package registry). Two steps:
#
#   scripts/gpu_benchmarks.sh prepare <InstantCharacter checkout> <InstantID checkout>
#       here: into .device/ (git-ignored): wheels/ (diffusers, gguf, einops, torchsde, trampoline), nf4/
#       (bitsandbytes, 41 MiB), pyav/ (PyAV for Python 3.12, 34 MiB: ComfyUI's comfy_api imports it and
#       the GPU machine's image lacks it), the reference code (pipeline and model files only; never
#       committed), ComfyUI's tokenizers and ComfyUI's own code. Together they exceed the 64 MiB a call
#       carries, so the run is two calls, each carrying only its part:
#   scripts/gpu_benchmarks.sh run local [--tiny]
#       carry .device/wheels .device/nf4 .device/InstantCharacter .device/InstantID .device/tokenizers:
#       local InstantCharacter and InstantID at full size (1024², 28 / 30 steps) for each memory mode
#       and weight format, with the reference pipelines
#   scripts/gpu_benchmarks.sh run native [--tiny]
#       carry .device/wheels .device/pyav .device/comfyui: native InstantCharacter (ComfyUI's own FLUX,
#       bf16 / fp8 weights) and native InstantID (ComfyUI's own SDXL, fp16, with and without it)
#       through ComfyUI's sampler
#   (run all [--tiny]: both, where everything is at hand, e.g. the --tiny check on a CPU)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEVICE_DIR="$REPO_ROOT/.device"

case "${1:-}" in
prepare)
  [ $# -eq 3 ] || { sed -n 2,14p "$0"; exit 2; }
  PY="$REPO_ROOT/.comfyui/venv/bin/python"
  rm -rf "$DEVICE_DIR" && mkdir -p "$DEVICE_DIR/wheels" "$DEVICE_DIR/nf4" "$DEVICE_DIR/pyav" \
    "$DEVICE_DIR/InstantCharacter" "$DEVICE_DIR/InstantID" "$DEVICE_DIR/tokenizers"
  "$PY" -m pip download --quiet --no-deps -d "$DEVICE_DIR/wheels" -c "$REPO_ROOT/scripts/constraints.txt" \
    diffusers gguf
  "$PY" -m pip download --quiet --no-deps -d "$DEVICE_DIR/nf4" -c "$REPO_ROOT/scripts/constraints.txt" bitsandbytes
  # the GPU machine runs Python 3.12: PyAV's compiled wheel for it (abi3)
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$DEVICE_DIR/pyav" \
    -c "$REPO_ROOT/scripts/constraints.txt" av
  cp -r "$2/pipeline.py" "$2/models" "$DEVICE_DIR/InstantCharacter/"
  (cd "$3" && cp -r --parents pipeline_stable_diffusion_xl_instantid_full.py ip_adapter "$DEVICE_DIR/InstantID/")
  COMFY="$REPO_ROOT/.comfyui/ComfyUI/comfy"
  cp -r "$COMFY/sd1_tokenizer" "$COMFY/text_encoders/t5_tokenizer" "$DEVICE_DIR/tokenizers/"
  # ComfyUI's own code for the native benchmark (its sampler and model management in-process), and
  # the packages it needs beyond torch and transformers
  # (without its text tokenizer folders, 19 MiB the benchmarks do not read; comfy/ldm/cosmos/cosmos_tokenizer
  # is code that comfy.sd imports)
  mkdir -p "$DEVICE_DIR/comfyui/ComfyUI"
  (cd "$REPO_ROOT/.comfyui/ComfyUI" && tar -c --exclude='comfy/text_encoders/*_tokenizer' \
    --exclude='comfy/sd1_tokenizer' --exclude=__pycache__ comfy comfy_api \
    comfy_execution comfy_extras utils folder_paths.py node_helpers.py latent_preview.py comfyui_version.py \
    protocol.py | tar -x -C "$DEVICE_DIR/comfyui/ComfyUI")
  "$PY" -m pip download --quiet --no-deps -d "$DEVICE_DIR/wheels" -c "$REPO_ROOT/scripts/constraints.txt" \
    einops torchsde trampoline
  find "$DEVICE_DIR" -name __pycache__ -prune -exec rm -rf {} +
  du -sh "$DEVICE_DIR"/*
  echo "then: scripts/gpu_benchmarks.sh run local, and run native, each carrying its part (see the header)"
  ;;
run)
  PART="${2:-}"
  case "$PART" in local|native|all) shift ;; *) sed -n 2,21p "$0"; exit 2 ;; esac
  [ -d "$DEVICE_DIR/wheels" ] || { echo ".device is missing: run 'prepare' here and carry it"; exit 2; }
  PY="${PYTHON:-python3}"
  LIB="$(mktemp -d)"
  WHEELS=("$DEVICE_DIR"/wheels/*.whl)
  if [ "$PART" != native ]; then WHEELS+=("$DEVICE_DIR"/nf4/*.whl); fi
  if [ "$PART" != local ] && ! "$PY" -c "import av" 2>/dev/null; then WHEELS+=("$DEVICE_DIR"/pyav/*.whl); fi
  "$PY" -m pip install --quiet --no-index --no-deps --target "$LIB" "${WHEELS[@]}"
  export PYTHONPATH="$LIB:$REPO_ROOT" HF_HUB_OFFLINE=1
  TOKENIZERS=("$DEVICE_DIR/tokenizers/sd1_tokenizer" "$DEVICE_DIR/tokenizers/t5_tokenizer")
  if [ "${2:-}" = "--tiny" ]; then
    IC=(--scale tiny --device cpu --dtype fp32 --size 64 --steps 3)
    NATIVE=(--scale tiny --device cpu --dtype fp32 --size 64 --steps 3)
    ID=(--device cpu --dtype bf16 --size 128 --steps 2 --repeat 1 --memory-mode resident)
    NATIVE_ID=(--scale tiny --device cpu --dtype fp32 --size 64 --steps 2 --repeat 1)
  else
    "$PY" -c "import torch; print(torch.cuda.get_device_name(), torch.__version__)"
    IC=(--device cuda --dtype bf16)
    NATIVE=(--device cuda --dtype bf16)
    ID=(--device cuda --dtype fp16)
    NATIVE_ID=(--device cuda --dtype fp16)
  fi
  if [ "$PART" != native ]; then
    echo "== local InstantCharacter"
    "$PY" "$REPO_ROOT/benchmarks/local_instantcharacter.py" --full-size "${IC[@]}" \
      --reference "$DEVICE_DIR/InstantCharacter" --tokenizers "${TOKENIZERS[@]}"
    echo "== local InstantID"
    "$PY" "$REPO_ROOT/benchmarks/local_instantid.py" --full-size "${ID[@]}" \
      --reference "$DEVICE_DIR/InstantID" --tokenizer "${TOKENIZERS[0]}"
  fi
  if [ "$PART" != local ]; then
    echo "== native InstantCharacter (ComfyUI's FLUX MODEL patched, ComfyUI's sampler)"
    COMFYUI_DIR="$DEVICE_DIR/comfyui" "$PY" "$REPO_ROOT/benchmarks/native_instantcharacter.py" --full-size "${NATIVE[@]}"
    echo "== native InstantID (ComfyUI's SDXL MODEL patched + the IdentityNet as its ControlNet, ComfyUI's sampler)"
    COMFYUI_DIR="$DEVICE_DIR/comfyui" "$PY" "$REPO_ROOT/benchmarks/native_instantid.py" --full-size "${NATIVE_ID[@]}"
  fi
  ;;
*)
  sed -n 2,14p "$0"; exit 2 ;;
esac
