#!/usr/bin/env bash
# Run the test suite inside the project environment (after scripts/setup_env.sh).
# Each run gets its own ROS domain and loopback-only discovery so parallel runs and
# other machines never see each other. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 101 ))}"
export ROS_LOG_DIR="$ROOT/build/test_ros_log"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
echo "[test] ROS_DOMAIN_ID=$ROS_DOMAIN_ID, discovery LOCALHOST, logs $ROS_LOG_DIR"
set +e
python -m pytest "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: that is a failure for this project, not a pass.
exit $rc
