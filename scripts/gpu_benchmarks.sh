#!/usr/bin/env bash
# The GPU benchmarks in one call, for a session that is lent a GPU machine (which has torch and
# transformers but no package registry). Two steps:
#
#   scripts/gpu_benchmarks.sh prepare <InstantCharacter checkout> <InstantID checkout>
#       here: wheels (diffusers, gguf, bitsandbytes), the reference code (pipeline and model files
#       only; never committed) and ComfyUI's tokenizers into .device/ (git-ignored, < 64 MiB)
#   scripts/gpu_benchmarks.sh run [--tiny]
#       on the GPU machine, with .device carried: installs the wheels into a temporary folder, then
#       prints local InstantCharacter and InstantID at full size (1024², 28 / 30 steps) for each
#       memory mode and weight format, with the reference pipelines, native InstantCharacter
#       (ComfyUI's own FLUX, bf16 / fp8 weights) and native InstantID (ComfyUI's own SDXL, fp16, with and
#       without it) through ComfyUI's sampler. --tiny checks it all on a CPU.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEVICE_DIR="$REPO_ROOT/.device"

case "${1:-}" in
prepare)
  [ $# -eq 3 ] || { sed -n 2,14p "$0"; exit 2; }
  PY="$REPO_ROOT/.comfyui/venv/bin/python"
  rm -rf "$DEVICE_DIR" && mkdir -p "$DEVICE_DIR/wheels" "$DEVICE_DIR/InstantCharacter" "$DEVICE_DIR/InstantID" \
    "$DEVICE_DIR/tokenizers"
  "$PY" -m pip download --quiet --no-deps -d "$DEVICE_DIR/wheels" -c "$REPO_ROOT/scripts/constraints.txt" \
    diffusers gguf bitsandbytes
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
  du -sh "$DEVICE_DIR"
  echo "carry .device with the run: scripts/gpu_benchmarks.sh run"
  ;;
run)
  [ -d "$DEVICE_DIR/wheels" ] || { echo ".device is missing: run 'prepare' here and carry it"; exit 2; }
  PY="${PYTHON:-python3}"
  LIB="$(mktemp -d)"
  "$PY" -m pip install --quiet --no-index --no-deps --target "$LIB" "$DEVICE_DIR"/wheels/*.whl
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
  echo "== local InstantCharacter"
  "$PY" "$REPO_ROOT/benchmarks/local_instantcharacter.py" --full-size "${IC[@]}" \
    --reference "$DEVICE_DIR/InstantCharacter" --tokenizers "${TOKENIZERS[@]}"
  echo "== native InstantCharacter (ComfyUI's FLUX MODEL patched, ComfyUI's sampler)"
  COMFYUI_DIR="$DEVICE_DIR/comfyui" "$PY" "$REPO_ROOT/benchmarks/native_instantcharacter.py" --full-size "${NATIVE[@]}"
  echo "== local InstantID"
  "$PY" "$REPO_ROOT/benchmarks/local_instantid.py" --full-size "${ID[@]}" \
    --reference "$DEVICE_DIR/InstantID" --tokenizer "${TOKENIZERS[0]}"
  echo "== native InstantID (ComfyUI's SDXL MODEL patched + the IdentityNet as its ControlNet, ComfyUI's sampler)"
  COMFYUI_DIR="$DEVICE_DIR/comfyui" "$PY" "$REPO_ROOT/benchmarks/native_instantid.py" --full-size "${NATIVE_ID[@]}"
  ;;
*)
  sed -n 2,14p "$0"; exit 2 ;;
esac
