#!/usr/bin/env bash
# The parity-check CI job: run the main job on its built-in default (train a small teacher,
# distil a student with LD, export it with decoding and NMS in the graph) and check the
# exported graphs against the PyTorch student on the shapes validation images and on real
# photographs (coco128). `ldexport demo` exits 1 when any parity check fails, so a parity
# regression fails CI. The reports are left in $work.
set -euo pipefail
cd "$(dirname "$0")/.."

work=${1:-work_dirs/ci_parity}
photos=${LDEXPORT_PARITY_IMAGES:-../shared/data/coco128/images/train2017}
rm -rf "$work"
args=(--work-dir "$work" --max-images 8)
if [ -d "$photos" ]; then
    args+=(--images "$photos")
else
    echo "ci_parity: $photos not found; checking on the generated validation images only" >&2
fi
.venv/bin/ldexport demo "${args[@]}"
