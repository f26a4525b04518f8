# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Private per-user directories and inter-process file locks.

Why a private directory is checked and not just created: the inference backends load
ONNX graphs and TensorRT engines from temporary folders, and both are code-like (an
engine is machine code for the GPU). A fixed name such as ``/tmp/ldka_ros_trt_0`` can be
created first by another local user, as a symlink to a folder they control or with
permissions that let them swap files in. So a folder under the temp directory is used
only if it is a real directory (not a symlink), owned by the current user and mode
0700; otherwise it is refused with the reason logged and a fresh ``mkdtemp`` folder
(unique, 0700) is used for this process instead.

Why atomic writes: manifests, class lists, checkpoints and reports are read by other
processes while they are rewritten (the learner node while its job publishes, an
operator's command while a node runs). A reader must see the old file or the whole new
one, never half, also after a power cut: the bytes go to a temporary file in the same
directory, are fsynced, renamed over the target, and the directory is fsynced.

Why a lock file: the frame store's manifest is rewritten by the learner's service
threads and by the learning job in another process; ``fcntl.flock`` on a separate lock
file serialises read-modify-write cycles across both, and the lock is released by the
kernel if the holder dies.
"""
from __future__ import annotations

from contextlib import contextmanager
import fcntl
import json
import logging
import os
from pathlib import Path
import stat
import tempfile
import threading
from typing import BinaryIO, Iterator

LOG = logging.getLogger(__name__)

_fallbacks: dict[tuple[str, str], Path] = {}
_fallback_lock = threading.Lock()


def private_dir_problem(path: str | os.PathLike) -> str | None:
    """Return why ``path`` is not a private directory of this user, or None if it is."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f'cannot stat it ({exc})'
    if stat.S_ISLNK(info.st_mode):
        return 'it is a symlink'
    if not stat.S_ISDIR(info.st_mode):
        return 'it is not a directory'
    if info.st_uid != os.getuid():
        return f'it is owned by uid {info.st_uid}, not {os.getuid()}'
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700:
        return f'its mode is {mode:04o}, not 0700'
    return None


def private_dir(name: str, base: str | os.PathLike | None = None) -> Path:
    """
    Return ``<base>/<name>_<uid>`` if it is (or can be made) a private directory.

    ``base`` defaults to ``tempfile.gettempdir()``. A directory created here gets mode
    0700; an existing one must already pass :func:`private_dir_problem`. Otherwise the
    reason is logged and a ``mkdtemp`` folder is returned instead (the same one for
    every call of this process with these arguments).
    """
    root = Path(base) if base is not None else Path(tempfile.gettempdir())
    path = root / f'{name}_{os.getuid()}'
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # the umask may have removed owner bits
    except FileExistsError:
        pass
    except OSError as exc:
        return _fallback(name, root, f'{path} cannot be created ({exc})')
    problem = private_dir_problem(path)
    if problem is None:
        return path
    return _fallback(name, root, f'{path} is not used: {problem}')


def _fallback(name: str, root: Path, reason: str) -> Path:
    """Return this process's own ``mkdtemp`` folder for ``name``, logging ``reason`` once."""
    key = (name, str(root))
    with _fallback_lock:
        path = _fallbacks.get(key)
        if path is not None and private_dir_problem(path) is None:
            return path
        try:
            path = Path(tempfile.mkdtemp(prefix=f'{name}_{os.getuid()}_', dir=root))
        except OSError:
            path = Path(tempfile.mkdtemp(prefix=f'{name}_{os.getuid()}_'))
        _fallbacks[key] = path
    LOG.warning('%s; using the private folder %s for this process', reason, path)
    return path


@contextmanager
def locked(lock_path: str | os.PathLike) -> Iterator[None]:
    """
    Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block.

    Each call opens the file anew, so the lock also excludes other threads of this
    process, not only other processes.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """
    Yield a binary file whose bytes replace ``path`` atomically when the block ends.

    The bytes go to a temporary file in the same directory (same file system, so the
    rename is atomic), are flushed and fsynced, then renamed over ``path``; the
    directory is fsynced too so the rename survives a power cut. On any error the
    temporary file is removed and ``path`` is untouched. A writer that streams (a
    checkpoint through ``torch.save``) never holds the whole file in memory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + '\n')


def fsync_dir(directory: str | os.PathLike) -> None:
    """Fsync a directory so that renames inside it are durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
