#!/usr/bin/env bash
# Sets up ldexport in ./.venv on a fresh machine: torch first (the CPU build where no
# GPU build is wanted), then ldexport with its ONNX and evaluation extras and the test
# tools. With --reference, also the mmdet 3.3 / mmcv 2.1 reference the parity tests use
# (mmcv is compiled once, about 15 minutes on 2 cores, then cached).
#
#   bash scripts/setup.sh [--reference]
#
# Environment: VENV (default .venv), PYTHON_BIN (the Python that makes it; default python3),
# TORCH_SPEC (default torch==2.13.0), LDEXPORT_MMCV_WHEEL (an mmcv 2.1.0 wheel to install
# instead of compiling one). The GPU machine's software on this CPU (Python 3.12, torch 2.11's
# CUDA build, which runs without a GPU, and the mmcv wheel built for it), to run the tests or
# `scripts/gpu_check.sh --cpu` as they will run there before a GPU is lent (PYTHON_BIN: a
# Python 3.12; on the project's machines ~/.pyenv/versions/3.12.1/bin/python3.12):
#
#   VENV=.venv-twin PYTHON_BIN=python3.12 TORCH_SPEC=torch==2.11.0 \
#     LDEXPORT_MMCV_WHEEL=../shared/device-wheels/mmcv-2.1.0-cp312-cp312-linux_x86_64.whl \
#     bash scripts/setup.sh --reference
set -euo pipefail
cd "$(dirname "$0")/.."

reference=0
for arg in "$@"; do
    case "$arg" in
        --reference) reference=1 ;;
        *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || "${PYTHON_BIN:-python3}" -m venv "$venv"
python=$venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch before anything that requires it: an unpinned requirement would otherwise pull
# the newest CUDA build (gigabytes) onto a CPU machine. TORCH_SPEC picks another build.
if ! "$python" -c 'import torch' 2>/dev/null; then
    "$python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
torch_version=$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')
# Any later install must keep this torch.
constraints=$(mktemp)
echo "torch==$torch_version" > "$constraints"

"$python" -m pip install -q -c "$constraints" -e '.[onnx,eval,dev]'
# The stubs declare a dependency on tensorrt itself, which cannot be installed here.
"$python" -m pip install -q --no-deps 'tensorrt-stubs==10.13.0.35.1'

if [ "$reference" = 1 ]; then
    PYTHON="$python" bash scripts/build_reference.sh
fi
rm -f "$constraints"
"$python" -c 'import sys, torch, ldexport; print(f"setup: ldexport {ldexport.__version__}, torch {torch.__version__}, Python {sys.version.split()[0]} in {sys.prefix}")'
