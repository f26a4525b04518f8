# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Tests for the model registry: atomic publish under SIGKILL, digests, locking, rollback.

The crash tests start a real publisher process and SIGKILL it at a chosen point. The
child pauses there through a small wrapper installed in the child only (the registry
code it runs is unchanged), so the kill lands exactly mid-copy, before the rename of the
finished version, or while the active pointer is replaced.
"""
import errno
import hashlib
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

from child_process import reap
from ldka_ros.imaging.colors import slot_color
from ldka_ros.registry import (
    DigestMismatchError, ModelRegistry, RegistryError, VersionManifest, VersionNotFoundError,
)
from ldka_ros.registry import registry as registry_mod
from ldka_ros.registry.manifest import MANIFEST_SCHEMA
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def legend(ids):
    return [{'id': i, 'name': f'class{i}', 'color': list(slot_color(i))} for i in ids]


@pytest.fixture(scope='module')
def onnx_model(tmp_path_factory):
    """Export one small real SegModel (classes 0..3 active) to ONNX with export_onnx."""
    import torch

    from ldka_ros.inference.export import export_onnx
    from ldka_ros.learning.model import ModelConfig, SegModel

    torch.manual_seed(0)
    model = SegModel(ModelConfig(backbone='mobilenetv2_100', num_slots=12,
                                 decoder_channels=32)).eval()
    model.set_active([1, 2, 3])
    path = tmp_path_factory.mktemp('onnx') / 'seg.onnx'
    export_onnx(model, path, input_hw=(64, 96))
    return path


def make_file(path: Path, size: int, seed: int) -> Path:
    """Write ``size`` deterministic pseudo-random bytes (different per seed)."""
    block = hashlib.sha256(f'seed{seed}'.encode()).digest() * 2048
    with open(path, 'wb') as handle:
        written = 0
        while written < size:
            chunk = block[:size - written]
            handle.write(chunk)
            written += len(chunk)
    return path


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(tmp_path / 'reg', keep_last=10, create=True)


def test_publish_roundtrip_and_manifest(registry, onnx_model, tmp_path):
    ckpt = make_file(tmp_path / 'model.pt', 10_000, 1)
    v1 = registry.publish({'onnx': onnx_model, 'checkpoint': ckpt}, legend([0, 1, 2, 3]),
                          step=0, metrics={'miou': 0.5}, extra={'method': 'base'},
                          activate=True)
    assert v1.id == 'v0001' and v1.parent is None and registry.active_id() == 'v0001'
    v2 = registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 3]), parent=v1.id, step=1)
    assert v2.id == 'v0002' and v2.parent == 'v0001'
    assert registry.active_id() == 'v0001'  # publishing does not activate by default
    assert registry.version_ids() == ['v0001', 'v0002']
    stored = registry.get('v0001')
    assert stored.to_dict() == v1.to_dict()
    assert stored.artefacts['onnx'].sha256 == file_sha(onnx_model)
    assert stored.artefacts['checkpoint'].size == 10_000
    assert stored.extra['input_hw'] == [64, 96]  # read from the graph
    assert stored.extra['method'] == 'base'
    assert stored.created.endswith('Z')
    raw = json.loads((registry.version_dir('v0001') / 'manifest.json').read_text())
    assert raw['schema'] == MANIFEST_SCHEMA
    assert VersionManifest.from_dict(raw).to_dict() == raw
    path = registry.artefact_path('v0001', 'checkpoint')
    assert path.read_bytes() == ckpt.read_bytes()
    assert registry.verify('v0002').id == 'v0002'
    assert [m.id for m in registry.list_versions()] == ['v0001', 'v0002']
    assert not [p for p in registry.root.iterdir() if p.name.startswith('.tmp-')]
    with pytest.raises(ValueError, match='schema'):
        VersionManifest.from_dict(dict(raw, schema='other/9'))


def test_clear_errors(tmp_path, onnx_model):
    with pytest.raises(RegistryError, match='create=True'):
        ModelRegistry(tmp_path / 'missing')
    (tmp_path / 'plain').mkdir()
    with pytest.raises(RegistryError, match='not a model registry'):
        ModelRegistry(tmp_path / 'plain')
    reg = ModelRegistry(tmp_path / 'missing', create=True)
    assert reg.version_ids() == [] and reg.active() is None
    with pytest.raises(VersionNotFoundError, match='unknown model version .v0007.*none'):
        reg.get('v0007')
    reg.publish({'onnx': onnx_model}, legend([0, 1, 2, 3]))
    with pytest.raises(VersionNotFoundError, match='existing versions: v0001'):
        reg.activate('v0002')
    with pytest.raises(VersionNotFoundError, match='not a version id'):
        reg.get('latest')
    with pytest.raises(FileNotFoundError, match='is not a file'):
        reg.publish({'onnx': tmp_path / 'nope.onnx'}, legend([0, 1, 2, 3]))
    with pytest.raises(ValueError, match='appears twice'):
        reg.publish({'onnx': onnx_model}, legend([0, 1]) + legend([1]))
    with pytest.raises(RegistryError, match='no artefact'):
        reg.artefact_path('v0001', 'checkpoint')
    assert reg.version_ids() == ['v0001']


def test_manifest_must_match_onnx(registry, onnx_model, tmp_path):
    # The graph has slots 0..3 active: a legend naming other classes is refused.
    with pytest.raises(RegistryError, match=r'does not match ONNX.*active slots \[0, 1, 2, 3\]'):
        registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 5]))
    with pytest.raises(RegistryError, match='does not match ONNX.*input_hw'):
        registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 3]),
                         extra={'input_hw': [240, 320]})
    junk = make_file(tmp_path / 'junk.onnx', 5000, 3)
    with pytest.raises(RegistryError, match='not a readable ONNX model'):
        registry.publish({'onnx': junk}, legend([0, 1, 2, 3]))
    assert registry.version_ids() == []
    assert not [p for p in registry.root.iterdir() if p.name.startswith('.tmp-')]


def test_digest_mismatch_is_refused(registry, onnx_model, tmp_path):
    ckpt = make_file(tmp_path / 'model.pt', 50_000, 2)
    v1 = registry.publish({'onnx': onnx_model, 'checkpoint': ckpt}, legend([0, 1, 2, 3]),
                          activate=True)
    v2 = registry.publish({'onnx': onnx_model, 'checkpoint': ckpt}, legend([0, 1, 2, 3]),
                          parent=v1.id)
    stored = registry.artefact_path(v2.id, 'checkpoint')
    expected = file_sha(stored)
    data = bytearray(stored.read_bytes())
    data[1234] ^= 0xFF  # one flipped byte, same size
    stored.write_bytes(bytes(data))
    actual = file_sha(stored)
    with pytest.raises(DigestMismatchError) as info:
        registry.verify(v2.id)
    message = str(info.value)
    assert str(stored) in message and expected in message and actual in message
    with pytest.raises(DigestMismatchError):
        registry.artefact_path(v2.id, 'checkpoint')
    assert registry.artefact_path(v2.id, 'checkpoint', verify=False) == stored
    assert registry.artefact_path(v2.id, 'onnx').is_file()  # the other file is intact
    with pytest.raises(DigestMismatchError):
        registry.activate(v2.id)
    assert registry.active_id() == v1.id
    stored.unlink()
    with pytest.raises(DigestMismatchError, match='missing'):
        registry.verify(v2.id)


def test_rollback(registry, onnx_model):
    classes = legend([0, 1, 2, 3])
    v1 = registry.publish({'onnx': onnx_model}, classes, activate=True)
    v2 = registry.publish({'onnx': onnx_model}, classes, parent=v1.id, step=1, activate=True)
    v3 = registry.publish({'onnx': onnx_model}, classes, parent=v2.id, step=2, activate=True)
    assert registry.active_id() == v3.id
    assert registry.rollback().id == v2.id and registry.active_id() == v2.id
    with pytest.raises(RegistryError, match='not older'):
        registry.rollback(to=v3.id)
    assert registry.rollback(to='v0001').id == v1.id
    with pytest.raises(RegistryError, match='no parent'):
        registry.rollback()
    assert registry.activate(v3.id).id == v3.id
    # A corrupted rollback target is refused and the pointer stays.
    target = registry.artefact_path(v2.id, 'onnx')
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(DigestMismatchError):
        registry.rollback()
    assert registry.active_id() == v3.id
    assert registry.rollback(to=v1.id).id == v1.id


def test_prune_keeps_last_n_active_and_parent(tmp_path, onnx_model):
    reg = ModelRegistry(tmp_path / 'reg', keep_last=2, create=True)
    classes = legend([0, 1, 2, 3])
    v1 = reg.publish({'onnx': onnx_model}, classes)
    v2 = reg.publish({'onnx': onnx_model}, classes, parent=v1.id, activate=True)
    for _ in range(4):
        reg.publish({'onnx': onnx_model}, classes, parent=v2.id)
    assert reg.version_ids() == ['v0001', 'v0002', 'v0005', 'v0006']
    reg.activate('v0006')  # parent v0002; v0001 is neither recent, active nor parent
    assert reg.prune() == ['v0001']
    assert reg.version_ids() == ['v0002', 'v0005', 'v0006']
    # Ids are never reused, even when the newest version directory is gone.
    shutil.rmtree(reg.version_dir('v0006'))
    assert reg.publish({'onnx': onnx_model}, classes).id == 'v0007'
    assert not [p for p in reg.root.iterdir() if p.name.startswith(('.tmp-', '.trash-'))]
    for vid in reg.version_ids():
        reg.verify(vid)


def test_device_artefact(registry, onnx_model, tmp_path):
    v1 = registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 3]), activate=True)
    plan = make_file(tmp_path / 'engine.plan', 30_000, 4)
    manifest = registry.add_device_artefact(v1.id, 'tensorrt', plan, device='orin-trt10')
    entry = manifest.artefacts['tensorrt@orin-trt10']
    assert entry.device == 'orin-trt10' and entry.sha256 == file_sha(plan)
    assert registry.get(v1.id).artefacts['tensorrt@orin-trt10'] == entry
    path = registry.artefact_path(v1.id, 'tensorrt', device='orin-trt10')
    assert path.read_bytes() == plan.read_bytes()
    # Rebuilding the plan replaces the entry and removes the old file.
    plan2 = make_file(tmp_path / 'engine2.plan', 20_000, 5)
    registry.add_device_artefact(v1.id, 'tensorrt', plan2, device='orin-trt10')
    new_path = registry.artefact_path(v1.id, 'tensorrt', device='orin-trt10')
    assert new_path.read_bytes() == plan2.read_bytes() and not path.exists()
    registry.verify(v1.id)
    with pytest.raises(ValueError, match='device name'):
        registry.add_device_artefact(v1.id, 'tensorrt', plan2, device='bad device/')


def _readonly(path: Path):
    """Make ``path`` unwritable; return an undo function (None if impossible here)."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return lambda: os.chmod(path, 0o755)
    # root ignores permission bits; the immutable attribute still stops it.
    done = subprocess.run(['chattr', '+i', str(path)], capture_output=True)
    if done.returncode != 0:
        return None
    return lambda: subprocess.run(['chattr', '-i', str(path)], check=True)


def test_read_only_root(registry, onnx_model):
    v1 = registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 3]), activate=True)
    undo = _readonly(registry.root)
    if undo is None:
        pytest.skip('cannot make a directory read-only here (root without chattr)')
    try:
        with pytest.raises(RegistryError, match='read-only'):
            registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 3]))
        with pytest.raises(RegistryError, match='read-only'):
            registry.activate(v1.id)
        # Reading still works.
        assert registry.version_ids() == [v1.id] and registry.verify(v1.id).id == v1.id
        assert registry.active_id() == v1.id
    finally:
        undo()
    assert registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 3])).id == 'v0002'


def _try_mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which('mount') is None:
        return False
    path.mkdir()
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_disk_full_on_small_tmpfs(tmp_path, onnx_model):
    mount = tmp_path / 'small'
    if not _try_mount_tmpfs(mount, '1m'):
        pytest.skip('cannot mount a small tmpfs here (needs root and mount rights); '
                    'test_disk_full_cleans_up covers the cleanup path')
    try:
        reg = ModelRegistry(mount / 'reg', create=True)
        small = make_file(tmp_path / 'small.pt', 100_000, 6)
        big = make_file(tmp_path / 'big.pt', 3_000_000, 7)
        v1 = reg.publish({'checkpoint': small}, legend([0, 1]), activate=True)
        with pytest.raises(RegistryError, match='disk .* is full'):
            reg.publish({'checkpoint': big}, legend([0, 1]))
        assert reg.version_ids() == [v1.id] and reg.verify(v1.id)
        assert not [p for p in reg.root.iterdir() if p.name.startswith('.tmp-')]
        assert reg.publish({'checkpoint': small}, legend([0, 1])).id == 'v0002'
    finally:
        subprocess.run(['umount', str(mount)], check=True)


def test_disk_full_cleans_up(registry, onnx_model, tmp_path, monkeypatch):
    """ENOSPC on the second artefact (the device reports it mid-write): no trace remains."""
    v1 = registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 3]), activate=True)
    real_copy = registry_mod._copy_and_hash
    calls = []

    def copy_until_full(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            return real_copy(src, dst)
        with open(dst, 'wb') as handle:
            handle.write(b'partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(registry_mod, '_copy_and_hash', copy_until_full)
    ckpt = make_file(tmp_path / 'model.pt', 10_000, 8)
    with pytest.raises(RegistryError, match='full.*nothing was published'):
        registry.publish({'onnx': onnx_model, 'checkpoint': ckpt}, legend([0, 1, 2, 3]))
    assert len(calls) == 2 and not calls[1].parent.exists()
    monkeypatch.undo()
    assert registry.version_ids() == [v1.id]
    assert registry.publish({'onnx': onnx_model}, legend([0, 1, 2, 3])).id == 'v0002'


# -- crash and concurrency tests with real processes --------------------------------------

CHILD = r"""
import json, os, sys, time
from pathlib import Path
from ldka_ros.registry import registry as regmod

root, stage, artefact, parent = sys.argv[1:5]

def pause(where):
    print('PAUSED ' + where, flush=True)
    time.sleep(300)

if stage == 'copy':
    def half_copy(src, dst):
        data = Path(src).read_bytes()
        with open(dst, 'xb') as out:
            out.write(data[:len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
        pause('copy')
    regmod._copy_and_hash = half_copy
elif stage == 'rename':
    real_rename = os.rename
    def paused_rename(src, dst):
        if Path(dst).parent.name == 'versions':
            pause('rename')
        return real_rename(src, dst)
    os.rename = paused_rename
elif stage == 'activate':
    real_replace = os.replace
    def paused_replace(src, dst):
        if Path(dst).name == 'ACTIVE':
            pause('activate')
        return real_replace(src, dst)
    os.replace = paused_replace

reg = regmod.ModelRegistry(root)
legend = [{'id': 0, 'name': 'background', 'color': [0, 0, 0]},
          {'id': 1, 'name': 'mug', 'color': [255, 0, 0]}]
if stage == 'many':
    count = int(parent)
    while not Path(root, 'GO').exists():
        time.sleep(0.01)
    for i in range(count):
        art = Path(artefact).with_name(f'{Path(artefact).stem}-{i}.bin')
        art.write_bytes(os.urandom(200_000 + 1000 * i))
        m = reg.publish({'blob': art}, legend, extra={'publisher': os.getpid(), 'i': i})
        print('PUBLISHED ' + m.id, flush=True)
else:
    reg.publish({'checkpoint': artefact}, legend, parent=parent, activate=True)
    print('DONE', flush=True)
"""


def _child(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, '-c', CHILD, *map(str, args)], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


@pytest.mark.parametrize('stage', ['copy', 'rename', 'activate'])
def test_sigkill_mid_publish_leaves_registry_consistent(tmp_path, stage):
    reg = ModelRegistry(tmp_path / 'reg', create=True)
    first = make_file(tmp_path / 'first.pt', 300_000, 9)
    v1 = reg.publish({'checkpoint': first}, legend([0, 1]), activate=True)
    second = make_file(tmp_path / 'second.pt', 2_000_000, 10)
    proc = _child([reg.root, stage, second, v1.id])
    try:
        line = proc.stdout.readline()
        assert line.strip() == f'PAUSED {stage}', proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        reap(proc)
    assert proc.returncode == -signal.SIGKILL
    reopened = ModelRegistry(reg.root)
    if stage == 'activate':
        # The version was complete before the pointer write began: it is published and
        # intact, and the pointer still names the previous version.
        assert reopened.version_ids() == ['v0001', 'v0002']
        assert reopened.verify('v0002').artefacts['checkpoint'].sha256 == file_sha(second)
    else:
        assert reopened.version_ids() == ['v0001']  # the partial version is invisible
        assert [p.name for p in reopened.versions_dir.iterdir()] == ['v0001']
    assert reopened.active_id() == 'v0001'
    assert reopened.verify('v0001').artefacts['checkpoint'].sha256 == file_sha(first)
    # The next publish works (the dead child's lock is gone) and cleans its temp dir.
    nxt = reopened.publish({'checkpoint': first}, legend([0, 1]), parent=v1.id, activate=True)
    assert nxt.id == ('v0003' if stage == 'activate' else 'v0002')
    assert reopened.active_id() == nxt.id and reopened.verify(nxt.id)
    leftovers = [p.name for p in reopened.root.iterdir() if p.name.startswith(('.tmp-', '.A'))]
    assert leftovers == []


def test_concurrent_publishers_get_distinct_complete_versions(tmp_path):
    reg = ModelRegistry(tmp_path / 'reg', create=True)
    count = 4
    procs = [_child([reg.root, 'many', tmp_path / f'p{k}.bin', count]) for k in range(2)]
    try:
        time.sleep(0.5)
        (reg.root / 'GO').touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    published = [line.split()[1] for out, _ in outputs for line in out.splitlines()
                 if line.startswith('PUBLISHED')]
    assert len(published) == 2 * count
    assert sorted(published) == reg.version_ids() == [f'v{i:04d}' for i in range(1, 9)]
    seen = set()
    for vid in reg.version_ids():
        manifest = reg.verify(vid)
        key = (manifest.extra['publisher'], manifest.extra['i'])
        assert key not in seen
        seen.add(key)
        assert manifest.artefacts['blob'].size == 200_000 + 1000 * manifest.extra['i']
    assert len({pid for pid, _ in seen}) == 2
