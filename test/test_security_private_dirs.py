# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Temporary folders that graphs and engines are loaded from must be private to the user.

A folder with the well-known name that someone else prepared (a symlink to their
folder, group/world-writable, owned by another uid, not a folder at all) is never
used; a private ``mkdtemp`` folder is used instead. TensorRT is not installable here,
so its fallback cache is tested through ``writable_cache``, the function ``load`` uses.
"""
import os
from pathlib import Path
import stat
import tempfile

from ldka_ros.fsio import private_dir, private_dir_problem
from ldka_ros.inference.backends import select
from ldka_ros.inference.backends.tensorrt_backend import EngineCache, writable_cache
import pytest

UID = os.getuid()


def _assert_private(path: Path) -> None:
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode)
    assert info.st_uid == UID and stat.S_IMODE(info.st_mode) == 0o700
    assert private_dir_problem(path) is None


def _hostile(kind: str, base: Path, name: str) -> tuple[Path, Path | None]:
    """Create ``base/<name>_<uid>`` the way another local user could; return it and a target."""
    path = base / f'{name}_{UID}'
    target = None
    if kind == 'symlink':
        target = base / 'attacker'
        target.mkdir(mode=0o700)
        path.symlink_to(target)
    elif kind == 'world-writable':
        path.mkdir()
        path.chmod(0o777)
    elif kind == 'group-readable':
        path.mkdir()
        path.chmod(0o750)
    elif kind == 'other-owner':
        if UID != 0:
            pytest.skip('making a folder owned by another uid needs root')
        path.mkdir(mode=0o700)
        os.chown(path, 65534, 65534)
    elif kind == 'file':
        path.write_bytes(b'')
    return path, target


HOSTILE = ('symlink', 'world-writable', 'group-readable', 'other-owner', 'file')


def test_private_dir_is_created_0700_and_reused(tmp_path):
    old = os.umask(0o077 | 0o100)  # even a umask that removes the owner's x bit
    try:
        first = private_dir('ldka_test', tmp_path)
    finally:
        os.umask(old)
    assert first == tmp_path / f'ldka_test_{UID}'
    _assert_private(first)
    assert private_dir('ldka_test', tmp_path) == first


@pytest.mark.parametrize('kind', HOSTILE)
def test_private_dir_refuses_a_prepared_folder(tmp_path, kind, caplog):
    hostile, target = _hostile(kind, tmp_path, 'ldka_test')
    chosen = private_dir('ldka_test', tmp_path)
    assert chosen != hostile and chosen.parent == tmp_path
    _assert_private(chosen)
    assert private_dir('ldka_test', tmp_path) == chosen  # one fallback per process
    assert 'is not used' in caplog.text
    if target is not None:
        assert list(target.iterdir()) == []


@pytest.mark.parametrize('kind', ('symlink', 'world-writable'))
def test_probe_onnx_is_never_written_to_a_prepared_folder(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    hostile, target = _hostile(kind, tmp_path, 'ldka_ros_probe')
    _net, onnx_path, _batch = select.probe_artefacts()
    assert onnx_path.is_file() and onnx_path.parent != hostile
    _assert_private(onnx_path.parent)
    if target is not None:
        assert list(target.iterdir()) == []
    else:
        assert list(hostile.iterdir()) == []


def test_probe_dir_is_private_when_nothing_was_prepared(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    chosen = select._probe_dir()
    assert chosen == tmp_path / f'ldka_ros_probe_{UID}'
    _assert_private(chosen)


@pytest.mark.parametrize('kind', ('symlink', 'world-writable', 'other-owner'))
def test_tensorrt_fallback_cache_is_private(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    hostile, target = _hostile(kind, tmp_path, 'ldka_ros_trt')
    blocker = tmp_path / 'not-a-folder'
    blocker.write_bytes(b'')
    cache = writable_cache(EngineCache(blocker / 'engines'))  # unwritable: under a file
    assert cache.dir != hostile and cache.dir.parent == tmp_path
    _assert_private(cache.dir)
    if target is not None:
        assert list(target.iterdir()) == []


def test_tensorrt_writable_cache_is_kept(tmp_path):
    cache = EngineCache(tmp_path / 'engines')
    assert writable_cache(cache) is cache and cache.dir.is_dir()
