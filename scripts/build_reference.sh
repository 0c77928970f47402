#!/usr/bin/env bash
# Installs the mmdet 3.3.0 / mmcv 2.1.0 / mmengine 0.10.7 reference into the active
# Python environment. The parity tests in tests/reference/ compare ldexport with it.
#
# mmcv 2.1.0 has no wheel for this torch, so it is compiled from its source package
# (MMCV_WITH_OPS=1, about 15 minutes on 2 cores). The built wheel is cached under
# $LDEXPORT_WHEEL_CACHE (default ~/.cache/ldexport/wheels), keyed by the torch version,
# and reused on the next run. LDEXPORT_MMCV_WHEEL names a wheel built elsewhere to install
# instead (for example the one in ../shared/device-wheels, built for the GPU machine's torch).
set -euo pipefail

python=${PYTHON:-python}
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
cache=${LDEXPORT_WHEEL_CACHE:-$HOME/.cache/ldexport/wheels}/torch-$torch_version
mkdir -p "$cache"

if "$python" -c 'import mmcv, mmdet, mmengine, mmcv.ops' 2>/dev/null; then
    echo "build_reference: mmcv, mmengine and mmdet already importable"
    exit 0
fi

# The reference's pure-Python dependencies. opencv-python-headless stands in for
# opencv-python (no libGL on a headless machine); numpy stays the one installed.
"$python" -m pip install -q 'mmengine==0.10.7' --no-deps
"$python" -m pip install -q addict rich termcolor yapf opencv-python-headless \
    matplotlib scipy shapely six terminaltables tqdm pycocotools

if [ -n "${LDEXPORT_MMCV_WHEEL:-}" ]; then
    "$python" -m pip install -q --no-deps "$LDEXPORT_MMCV_WHEEL"
else
    if ! ls "$cache"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
        echo "build_reference: compiling mmcv 2.1.0 with ops (about 15 minutes on 2 cores)"
        "$python" -m pip install -q 'setuptools<70' wheel ninja
        tmp=$(mktemp -d)
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "$python" -m pip wheel --no-build-isolation \
            --no-deps -w "$tmp" 'mmcv==2.1.0'
        mv "$tmp"/mmcv-2.1.0-*.whl "$cache"/
        rm -rf "$tmp"
    fi
    "$python" -m pip install -q --no-deps "$cache"/mmcv-2.1.0-*.whl
fi
"$python" -m pip install -q --no-deps 'mmdet==3.3.0'
"$python" -c 'import mmcv.ops, mmdet, mmengine; print("build_reference: mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmengine", mmengine.__version__)'
