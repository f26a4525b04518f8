# Source this file (bash) to use the project's environment: venv, colcon install space,
# isolated ROS logging. `source scripts/env.sh` after `scripts/setup_env.sh`.
_ldka_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_ldka_venv="${LDKA_VENV:-$_ldka_root/.venv}"
# shellcheck disable=SC1091
case $- in *u*) _ldka_nu=1; set +u ;; *) _ldka_nu= ;; esac
source "$_ldka_venv/bin/activate"
[[ -n "$_ldka_nu" ]] && set -u
unset _ldka_nu
# pip-only ROS: ament's index must include the venv (where the ROS wheels live).
export AMENT_PREFIX_PATH="$_ldka_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
if [[ -f "$_ldka_root/install/setup.bash" ]]; then
  # colcon's setup scripts read unset variables (COLCON_TRACE): relax `set -u` around them.
  case $- in *u*) _ldka_nounset=1; set +u ;; *) _ldka_nounset= ;; esac
  # shellcheck disable=SC1091
  source "$_ldka_root/install/setup.bash"
  [[ -n "$_ldka_nounset" ]] && set -u
  unset _ldka_nounset
fi
# Fast DDS loses most best-effort images over 512 KB (640x480 rgb8) with its default
# transports; this profile's larger shared-memory segment carries them (graph.md).
export FASTRTPS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-$_ldka_root/config/fastdds_large_images.xml}"
export ROS_LOG_DIR="${ROS_LOG_DIR:-$_ldka_root/build/ros_log}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
unset _ldka_root _ldka_venv
