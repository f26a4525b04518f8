#!/usr/bin/env bash
# Create .venv and build both colcon packages on a machine without apt ROS.
#
# Why a script and not "pip install -r": the ROS 2 wheels need two fixes that only make
# sense inside this venv (CMake export paths that name the wheel build machine, and a
# torchvision op-schema hook for the CPU torch build), torch must be installed alone
# first so that no other package replaces it with a CUDA build, and the interface
# package must be built with colcon. A second run skips what is already up to date.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LDKA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
REQ="$ROOT/requirements"
t0=$(date +%s)
say() { printf '[setup] %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# Hash of everything that decides what gets installed; unchanged hash = skip pip.
req_hash=$(cat "$REQ"/*.txt "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/venv_fixes.py" | sha256sum | cut -c1-16)
stamp="$VENV/.ldka-requirements-$req_hash"
if [[ ! -f "$stamp" ]]; then
  say "installing pinned requirements (first run takes a few minutes)"
  "$VPY" -m pip install -q --upgrade "pip>=24" wheel "setuptools<80"
  "$VPY" -m pip install -q -r "$REQ/torch.txt"
  "$VPY" -m pip install -q -c "$REQ/constraints.txt" \
    -r "$REQ/ros.txt" -r "$REQ/build.txt" -r "$REQ/ml.txt" -r "$REQ/dev.txt"
  "$VPY" "$ROOT/scripts/venv_fixes.py" "$VENV"
  rm -f "$VENV"/.ldka-requirements-*
  touch "$stamp"
else
  say "requirements up to date ($req_hash)"
fi

# Headless Chromium + chromedriver from Debian for the console's browser test. Optional:
# the test skips (saying why) without them, so a machine without apt or root still sets up.
install_browser() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    say "chromium and chromedriver present"; return 0
  fi
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      say "chromium/chromedriver missing and not root (no sudo): the browser test will skip"
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "chromium/chromedriver missing and no apt-get: the browser test will skip"; return 0
  fi
  say "installing chromium and chromium-driver with apt-get (for the console browser test)"
  if ! { $sudo apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo \
      apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }; then
    say "apt-get could not install chromium: the browser test will skip"
  fi
}
if [[ "${LDKA_SKIP_BROWSER:-0}" != 1 ]]; then install_browser || true; fi

# colcon build: the interface package (ament_cmake) and ldka_ros (ament_python).
# colcon does not look inside a package's folder, so both paths are named.
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
export ROS_LOG_DIR="$ROOT/build/ros_log"
cd "$ROOT"; mkdir -p build
say "colcon build (ldka_ros_interfaces, ldka_ros)"
colcon --log-base build/colcon_log build --paths "$ROOT" "$ROOT/ldka_ros_interfaces" \
  --build-base build --install-base install --symlink-install \
  --event-handlers console_direct- summary- \
  --cmake-args -DBUILD_TESTING=OFF "-DPython3_EXECUTABLE=$VPY" >build/colcon_last.log 2>&1 || {
    cat build/colcon_last.log; say "colcon build failed"; exit 1; }
# The `ldka` CLI on the venv's PATH as well (editable, no dependency changes).
if ! "$VPY" -c "import importlib.metadata as m; m.distribution('ldka_ros')" >/dev/null 2>&1; then
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
fi
say "done in $(( $(date +%s) - t0 )) s: venv $VENV, install space $ROOT/install"
say "use it with: source scripts/env.sh"
