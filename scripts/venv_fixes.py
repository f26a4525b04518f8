"""
Environment fixes for a pip-only ROS 2 + CPU torch virtual environment.

Why this exists: two properties of the PyPI wheels (not of robots) break a plain venv.
1. The ROS 2 wheels' CMake export files name include paths of the machine the wheels
   were built on (/opt/python/cp3XX-...); CMake refuses non-existent paths, so building
   the interface package fails until they point at this venv's Python and numpy.
2. The only torchvision that fits torch 2.13 ships a C extension linked against CUDA,
   which fails to load on the CPU build; torchvision then registers fake kernels for
   ops that were never declared, and `import torchvision` (hence `import timm`) dies.
   A start-up hook declares those two op schemas, only when the extension fails to load.

Usage: python scripts/venv_fixes.py VENV
"""
from __future__ import annotations

from pathlib import Path
import re
import site
import sys
import sysconfig

HOOK_MODULE = '''"""Declare torchvision's op schemas when its C extension cannot load (CPU torch).

Written by ldka_ros scripts/venv_fixes.py. Acts only on the first import of torchvision
and only when torchvision's own extension fails to load.
"""
import importlib.abc
import importlib.util
import sys


class _TorchvisionOpsFix(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            _declare_ops_if_missing()
        except Exception:  # never break start-up; torchvision will report its own error
            pass
        return None


def _declare_ops_if_missing():
    import glob
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    libs = []
    for location in spec.submodule_search_locations:
        libs += glob.glob(os.path.join(location, "_C*.so"))
    for lib in libs:
        try:
            torch.ops.load_library(lib)
            return
        except OSError:
            continue
    fragment = torch.library.Library("torchvision", "FRAGMENT")
    fragment.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    fragment.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declare_ops_if_missing.fragment = fragment  # keep the library object alive


sys.meta_path.insert(0, _TorchvisionOpsFix())
'''


def fix_cmake_paths(venv: Path) -> int:
    """Point the wheels' CMake exports at this venv's Python headers and numpy."""
    import numpy

    py_include = sysconfig.get_paths()['include']
    np_include = numpy.get_include()
    np_pattern = re.compile(
        r'/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/_core/include')
    py_pattern = re.compile(r'/opt/python/cp3\d+-cp3\d+/include/python3\.\d+')
    changed = 0
    for path in (venv / 'share').rglob('*.cmake'):
        text = path.read_text(errors='surrogateescape')
        if '/opt/python/' not in text:
            continue
        new = py_pattern.sub(py_include, np_pattern.sub(np_include, text))
        if new != text:
            path.write_text(new, errors='surrogateescape')
            changed += 1
    return changed


def install_torchvision_hook() -> Path:
    """Write the start-up hook (.pth + module) into this venv's site-packages."""
    site_dir = Path(site.getsitepackages()[0])
    (site_dir / '_ldka_torchvision_fix.py').write_text(HOOK_MODULE)
    pth = site_dir / 'ldka_torchvision_fix.pth'
    pth.write_text('import _ldka_torchvision_fix\n')
    return pth


def main() -> int:
    venv = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
    n = fix_cmake_paths(venv)
    print(f"[setup] rewrote build-machine paths in {n} CMake files under {venv / 'share'}")
    print(f'[setup] torchvision op-schema hook: {install_torchvision_hook()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
