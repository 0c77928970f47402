#!/usr/bin/env bash
# Does LD work? Trains one teacher, then the same student twice with the same schedule,
# once distilled from that teacher with LD and once without a teacher (plain GFL), on the
# shapes data set the project generates (with a held-out val split), and prints both APs.
# Repeat with other seeds (--set train.seed=N) to see the run-to-run noise.
#
#   bash scripts/ld_works.sh [--work-dir DIR] [--set key=value ...]        # CPU, small
#   bash scripts/ld_works.sh --set data.scale=[320,320] --set train.epochs=24   # larger (GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ldexport demo --baseline --no-tensorrt --work-dir work_dirs/ld_works "$@"
