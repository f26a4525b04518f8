#!/usr/bin/env bash
# The one-command demo: teach the simulated robot a new object (the duck), end to end.
#
# Called by `make demo` after scripts/setup_env.sh. Extra arguments go to `ldka demo`
# (e.g. `bash scripts/demo.sh --quick`, `--out /tmp/demo`, `--launcher process`).
# The base model is built once and cached in $LDKA_CACHE/demo (default
# ~/.cache/ldka_ros/demo); later runs reuse it. Results: build/demo/report.txt and the
# overlay pictures build/demo/overlay_before.png / overlay_after.png.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh"
exec ldka demo "$@"
