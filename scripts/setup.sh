#!/usr/bin/env bash
# Sets up ldexport in ./.venv on a fresh machine: torch first (the CPU build where no
# GPU build is wanted), then ldexport with its ONNX and evaluation extras and the test
# tools. With --reference, also the mmdet 3.3 / mmcv 2.1 reference the parity tests use
# (mmcv is compiled once, about 15 minutes on 2 cores, then cached).
#
#   bash scripts/setup.sh [--reference]
set -euo pipefail
cd "$(dirname "$0")/.."

reference=0
for arg in "$@"; do
    case "$arg" in
        --reference) reference=1 ;;
        *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

[ -x .venv/bin/python ] || python3 -m venv .venv
python=.venv/bin/python
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
"$python" -c 'import torch, ldexport; print(f"setup: ldexport {ldexport.__version__}, torch {torch.__version__}")'
