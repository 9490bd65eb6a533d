#!/usr/bin/env bash
# Install a prism-sglang wheel into a Python that already has sglang 0.5.17 (the official SGLang image, or any
# venv), patch that sglang and verify the result. The Dockerfile runs exactly this script, and so does
# tests/test_launch.py (against a scratch copy of sglang), so CI exercises what the image build does.
#
#   usage: install-into-image.sh WHEEL          (PYTHON=python3 by default)
#
# Never touches the environment's torch/CUDA stack: the wheel goes in with --no-deps, then only the pure-Python
# requirements this environment lacks (e.g. accelerate, used by `prism-sglang prepare-model`), also --no-deps,
# versions from constraints.txt. Any failing step (a patch hunk that does not apply included) exits non-zero.
set -euo pipefail

if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 WHEEL   (a prism_sglang-*.whl built with: pip wheel --no-deps .)" >&2
    exit 2
fi
wheel=$1
python=${PYTHON:-python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pip_install=("$python" -m pip install --no-deps --no-cache-dir --disable-pip-version-check)

step() { printf '\n==> %s\n' "$*"; }

step "installing $(basename "$wheel") with --no-deps into $("$python" -c 'import sys; print(sys.prefix)')"
"${pip_install[@]}" "$wheel"

step "pure-Python requirements this environment lacks"
missing=$("$python" -m prism_sglang.sglang.install_check missing)
if [ -n "$missing" ]; then
    mapfile -t requirements <<<"$missing"
    printf '%s\n' "${requirements[@]}"
    constraints=()
    if [ -f "$here/../constraints.txt" ]; then constraints=(-c "$here/../constraints.txt"); fi
    "${pip_install[@]}" "${constraints[@]}" "${requirements[@]}"
else
    echo "none"
fi

# The console script must be the one just installed, in this Python's scripts folder.
prism_sglang=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/prism-sglang
if [ ! -x "$prism_sglang" ]; then
    prism_sglang=$(command -v prism-sglang) || { echo "error: the prism-sglang command was not installed" >&2; exit 1; }
fi

step "applying prism-sglang's patches to sglang (refuses any sglang but 0.5.17; fails if a hunk does not apply)"
"$prism_sglang" patch-sglang
"$prism_sglang" patch-sglang --check

step "verifying the plugin, its entry point and the requirements"
"$python" -m prism_sglang.sglang.install_check verify
