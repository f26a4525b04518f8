# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka registry``: a model's whole life in a registry, from the command line.

A real checkpoint (the small base model the learning tests train once and cache) is
published twice (real ONNX export, real parity check with ONNX Runtime), listed, shown,
activated, verified; one byte of a graph is flipped and ``verify`` (run as a real
``python -m ldka_ros.cli.main`` process, as a robot's health check runs it) names the
file and exits 1; a version travels through a ``.tar.gz`` and a folder into a second
registry, keeps its lineage there by content, verifies, and is pruned. Failures (a
checkpoint that cannot be published, a truncated one, hostile archives) leave every
registry exactly as it was.
"""
from __future__ import annotations

from contextlib import contextmanager
import hashlib
import io
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading

from ldka_ros.cli.main import main
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
INPUT = '96x128'


def ldka(*argv: str) -> int:
    """Run ``ldka registry ARGV`` in this process; return its exit code."""
    return main(['registry', *argv])


def tree(root: Path) -> dict[str, str]:
    """Return every file under ``root`` (relative path -> sha256), for unchanged-checks."""
    out = {}
    for path in sorted(root.rglob('*')):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir() or path.is_symlink():
            out[str(path.relative_to(root))] = 'dir' if path.is_dir() else 'link'
    return out


@contextmanager
def one_torch_thread():
    """Export with one thread: on 2 shared cores OpenMP's spinning threads slow it down."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def publish_temp_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith('ldka-publish-')}


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory, camvid_root) -> Path:
    """Return the weights file of the cached tiny base model (trained once per source)."""
    from test_learning_job import base_registry

    base = base_registry(tmp_path_factory.mktemp('base') / 'registry', camvid_root)
    return base / 'versions' / 'v0001' / 'checkpoint.pt'


@pytest.fixture(scope='module')
def published(tmp_path_factory, checkpoint) -> Path:
    """Return a registry made by ``create`` with v0001 (base, active) and v0002 (its child)."""
    root = tmp_path_factory.mktemp('published') / 'registry'
    with one_torch_thread():
        assert ldka('create', '--registry', str(root)) == 0
        assert ldka('publish', '--registry', str(root), '--checkpoint', str(checkpoint),
                    '--input-size', INPUT, '--activate', '--metrics',
                    '{"miou_all": 0.5}') == 0
        assert ldka('publish', '--registry', str(root), '--checkpoint', str(checkpoint),
                    '--parent', 'v0001') == 0
    return root


def copy_of(published: Path, dest: Path) -> Path:
    shutil.copytree(published, dest)
    return dest


def test_create_is_idempotent_and_refuses_a_folder_in_use(tmp_path, capsys):
    root = tmp_path / 'fresh'
    assert ldka('create', '--registry', str(root)) == 0
    assert (root / 'versions').is_dir()
    assert ldka('create', '--registry', str(root)) == 0
    assert 'already a model registry (0 versions)' in capsys.readouterr().out
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'notes.txt').write_text('not a registry')
    assert ldka('create', '--registry', str(busy)) == 2
    assert 'other files in it' in capsys.readouterr().err
    assert sorted(os.listdir(busy)) == ['notes.txt']


def test_a_missing_registry_names_the_command_that_makes_one(tmp_path, capsys):
    from ldka_ros.registry import ModelRegistry, RegistryError

    missing = tmp_path / 'home' / '.ldka_ros' / 'registry'
    with pytest.raises(RegistryError, match='ldka registry create --registry'):
        ModelRegistry(missing)
    assert ldka('list', '--registry', str(missing)) == 2
    err = capsys.readouterr().err
    assert f'ldka registry create --registry {missing}' in err
    assert '--create)' not in err and not missing.exists()
    # the command it names works
    assert ldka('create', '--registry', str(missing)) == 0
    assert ldka('list', '--registry', str(missing)) == 0


def test_a_node_on_a_fresh_home_names_the_publish_command(tmp_path, ros_domain):
    """The segmentation node on an empty registry tells the user which command fills it."""
    registry = tmp_path / 'home' / '.ldka_ros' / 'registry'
    env = {**os.environ, 'ROS_DOMAIN_ID': str(ros_domain),
           'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_LOG_DIR': str(tmp_path / 'log')}
    proc = subprocess.Popen([sys.executable, '-m', 'ldka_ros.nodes.segmentation_node',
                             '--ros-args', '-p', f'registry_path:={registry}'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO_ROOT)
    seen = []
    watchdog = threading.Timer(90.0, proc.kill)  # a silent node ends the loop, not the run
    watchdog.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if 'no model to serve yet' in line or len(seen) > 200:
                break
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=30)
    hint = [line for line in seen if 'no model to serve yet' in line]
    assert hint, ''.join(seen)
    assert f'ldka registry publish --registry {registry} --checkpoint CKPT' in hint[0]
    assert (registry / 'versions').is_dir()


def test_publish_is_the_learners_path(published):
    """A hand-published version has everything a learned one has, checked like one."""
    from ldka_ros.inference.export import read_metadata
    from ldka_ros.learning.checkpoint import load_checkpoint
    from ldka_ros.registry import ModelRegistry

    registry = ModelRegistry(published)
    base, child = registry.get('v0001'), registry.get('v0002')
    assert (base.parent, base.step, child.parent, child.step) == (None, 0, 'v0001', 1)
    assert base.metrics == {'miou_all': 0.5}
    for manifest in (base, child):
        assert sorted(manifest.artefacts) == ['checkpoint', 'onnx']
        assert manifest.extra['input_hw'] == [96, 128]  # v0002: taken from its parent
        parity = manifest.extra['export']['parity']
        assert parity['passed'] and parity['num_images'] == 4
        assert manifest.extra['export']['sha256'] == manifest.artefacts['onnx'].sha256
        assert [c['name'] for c in manifest.classes][:3] == ['background', 'sky', 'building']
        assert all('step' in c for c in manifest.classes)
    onnx_meta = read_metadata(registry.artefact_path('v0002', 'onnx'))
    assert onnx_meta['input_hw'] == [96, 128] and onnx_meta['parent_version'] == 'v0001'
    model, classes, meta = load_checkpoint(registry.artefact_path('v0002', 'checkpoint'))
    assert meta['parent_version'] == 'v0001' and meta['step'] == 1
    assert meta['input_hw'] == [96, 128]
    assert model.active_classes() == child.class_ids()
    assert registry.active_id() == 'v0001'


def test_life_of_a_version(published, tmp_path, capsys):
    from ldka_ros.registry import ModelRegistry

    root = copy_of(published, tmp_path / 'a')
    capsys.readouterr()
    # list: a table with the active marker, and JSON
    assert ldka('list', '--registry', str(root)) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[:4] == ['*', 'v0001', '-', '0'], rows
    assert rows[2].split()[:3] == ['v0002', 'v0001', '1'], rows
    assert 'checkpoint,onnx' in rows[2] and 'background,sky' in rows[2]
    assert ldka('list', '--json', '--registry', str(root)) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing['active'] == 'v0001' and listing['broken'] == []
    assert [v['id'] for v in listing['versions']] == ['v0001', 'v0002']
    assert listing['versions'][1]['parent'] == 'v0001'
    # show: manifest, metrics, artefact paths, sizes and digests
    manifest = json.loads((root / 'versions' / 'v0001' / 'manifest.json').read_text())
    assert ldka('show', '1', '--registry', str(root)) == 0
    shown = capsys.readouterr().out
    onnx = manifest['artefacts']['onnx']
    assert 'version v0001  (ACTIVE)' in shown and 'miou_all: 0.5' in shown
    assert str(root / 'versions' / 'v0001' / 'model.onnx') in shown
    assert onnx['sha256'] in shown and f'({onnx["size"]} bytes)' in shown
    # activate (digests first), verify everything
    assert ldka('activate', 'v0002', '--registry', str(root)) == 0
    assert (root / 'ACTIVE').read_text().strip() == 'v0002'
    assert ldka('verify', '--registry', str(root)) == 0
    out = capsys.readouterr().out
    assert 'ok v0001' in out and 'ok v0002' in out
    # exports made while the registry is healthy
    tar_path, folder = tmp_path / 'v0002.tar.gz', tmp_path / 'exports'
    folder.mkdir()
    assert ldka('export', 'v0002', str(tar_path), '--registry', str(root)) == 0
    assert ldka('export', 'v0001', str(folder), '--registry', str(root)) == 0
    assert (folder / 'v0001' / 'manifest.json').read_bytes() == \
        (root / 'versions' / 'v0001' / 'manifest.json').read_bytes()
    # one flipped byte in v0001's graph: the health check (a real process) exits 1
    graph = root / 'versions' / 'v0001' / 'model.onnx'
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, '-m', 'ldka_ros.cli.main', 'registry', 'verify',
                           '--registry', str(root)], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith('PROBLEM')]
    assert len(problems) == 1 and str(graph) in problems[0], proc.stdout
    assert 'ok v0002' in proc.stdout and 'Traceback' not in proc.stderr
    assert ldka('verify', 'v0002', '--registry', str(root)) == 0
    assert ldka('verify', 'v0001', '--registry', str(root)) == 1
    # a damaged version is neither activated nor exported
    before = tree(root)
    capsys.readouterr()
    assert ldka('activate', 'v0001', '--registry', str(root)) == 2
    assert ldka('export', 'v0001', str(tmp_path / 'bad.tar'), '--registry', str(root)) == 2
    assert 'nothing was exported' in capsys.readouterr().err
    assert tree(root) == before and not (tmp_path / 'bad.tar').exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []
    # into a second registry: new ids, lineage kept by content, digests intact
    other = tmp_path / 'b'
    assert ldka('create', '--registry', str(other)) == 0
    assert ldka('import', str(tar_path), '--registry', str(other)) == 0
    assert 'is not in' in capsys.readouterr().out  # its parent model is not there yet
    assert ldka('import', str(folder / 'v0001'), '--registry', str(other)) == 0
    capsys.readouterr()
    assert ldka('import', str(tar_path), '--registry', str(other), '--activate') == 0
    assert 'the same model is already here as v0001' in capsys.readouterr().out
    assert ldka('verify', '--registry', str(other)) == 0
    second = ModelRegistry(other)
    orphan, base, child = (second.get(v) for v in ('v0001', 'v0002', 'v0003'))
    assert orphan.parent is None and base.parent is None
    assert child.parent == 'v0002'  # A's v0001 is v0002 here
    source = ModelRegistry(root).get('v0002')
    for key in ('onnx', 'checkpoint'):
        assert child.artefacts[key].sha256 == source.artefacts[key].sha256
    assert child.extra['imported']['id'] == 'v0002' and child.classes == source.classes
    assert second.active_id() == 'v0003'
    # prune keeps the active version and its parent
    assert ldka('prune', '--keep', '1', '--registry', str(other)) == 0
    assert second.version_ids() == ['v0002', 'v0003']
    assert ldka('prune', '--keep', '1', '--registry', str(root)) == 0
    assert ModelRegistry(root).version_ids() == ['v0001', 'v0002']  # active v0002 + parent


def _snapshot_and_publish(root: Path, checkpoint: Path, capsys) -> str:
    before, temps = tree(root), publish_temp_dirs()
    capsys.readouterr()
    with one_torch_thread():
        code = ldka('publish', '--registry', str(root), '--checkpoint', str(checkpoint),
                    '--input-size', INPUT, '--activate')
    err = capsys.readouterr().err
    assert code == 2, err
    assert 'Traceback' not in err
    assert tree(root) == before
    assert publish_temp_dirs() == temps
    return err


def test_a_publish_that_fails_midway_changes_nothing(published, checkpoint, tmp_path,
                                                     capsys):
    from ldka_ros.learning.checkpoint import load_checkpoint, save_checkpoint

    root = copy_of(published, tmp_path / 'a')
    # The graph exports and passes parity, then the registry refuses the legend: the
    # checkpoint names a class the model has no active slot for.
    model, classes, meta = load_checkpoint(checkpoint)
    classes.add('duck', step=1)
    bad = save_checkpoint(tmp_path / 'legend_mismatch.pt', model, classes, meta=meta)
    err = _snapshot_and_publish(root, bad, capsys)
    assert 'does not match ONNX file' in err and 'active slots' in err
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(checkpoint.read_bytes()[:4096])
    assert 'corrupt or not a checkpoint' in _snapshot_and_publish(root, truncated, capsys)


def _hostile_tar(path: Path, export: Path, bad: tarfile.TarInfo, content: bytes = b''):
    """Write a tar holding a real export of v0001 plus one hostile member."""
    with tarfile.open(path, 'w') as tar:
        for item in sorted(export.iterdir()):
            tar.add(item, arcname=f'v0001/{item.name}')
        tar.addfile(bad, io.BytesIO(content) if bad.isreg() else None)


@pytest.mark.parametrize('kind', ['dotdot', 'absolute', 'symlink', 'hardlink', 'device'])
def test_a_hostile_archive_is_refused_and_nothing_is_written(published, tmp_path, kind,
                                                             capsys):
    target = tmp_path / 'outside' / 'evil'
    target.parent.mkdir()
    export = tmp_path / 'export'
    assert ldka('export', 'v0001', str(export), '--registry', str(published)) == 0
    if kind == 'dotdot':
        member = tarfile.TarInfo('v0001/../../outside/evil')
    elif kind == 'absolute':
        member = tarfile.TarInfo(str(target))
    elif kind == 'symlink':
        member = tarfile.TarInfo('v0001/evil')
        member.type, member.linkname = tarfile.SYMTYPE, str(target)
    elif kind == 'hardlink':
        member = tarfile.TarInfo('v0001/evil')
        member.type, member.linkname = tarfile.LNKTYPE, '/etc/passwd'
    else:
        member = tarfile.TarInfo('v0001/evil')
        member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
    member.size = 5 if member.isreg() else 0
    archive = tmp_path / 'hostile.tar'
    _hostile_tar(archive, export, member, b'pwned')
    other = tmp_path / 'b'
    assert ldka('create', '--registry', str(other)) == 0
    before = tree(other)
    capsys.readouterr()
    assert ldka('import', str(archive), '--registry', str(other), '--activate') == 2
    err = capsys.readouterr().err
    assert repr(member.name) in err, err
    assert 'nothing was imported' in err and 'Traceback' not in err
    assert tree(other) == before
    assert not target.exists() and not (tmp_path / 'evil').exists()
    # the same archive without the hostile member imports fine
    clean = tmp_path / 'clean.tar'
    with tarfile.open(clean, 'w') as tar:
        tar.add(export, arcname='v0001')
    assert ldka('import', str(clean), '--registry', str(other)) == 0


def test_an_archive_whose_file_does_not_match_its_manifest_is_refused(published, tmp_path,
                                                                      capsys):
    export = tmp_path / 'export'
    assert ldka('export', 'v0001', str(export), '--registry', str(published)) == 0
    graph = export / 'model.onnx'
    data = bytearray(graph.read_bytes())
    data[-100] ^= 0xFF
    graph.write_bytes(bytes(data))
    archive = tmp_path / 'tampered.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(export, arcname='v0001')
    other = tmp_path / 'b'
    assert ldka('create', '--registry', str(other)) == 0
    before = tree(other)
    capsys.readouterr()
    for source in (archive, export):
        assert ldka('import', str(source), '--registry', str(other)) == 2
        err = capsys.readouterr().err
        assert "artefact 'onnx' file model.onnx has sha256" in err, err
        assert tree(other) == before


def test_damaged_manifests_and_active_pointer_are_listed_and_fail_verify(
        published, tmp_path, capsys):
    root = copy_of(published, tmp_path / 'a')
    manifest = root / 'versions' / 'v0002' / 'manifest.json'
    manifest.write_bytes(manifest.read_bytes()[:200])  # truncated: not JSON any more
    (root / 'ACTIVE').write_text('garbage\n')
    shutil.copytree(root / 'versions' / 'v0001', root / 'versions' / 'v0007')
    (root / 'versions' / 'v0007' / 'manifest.json').unlink()
    capsys.readouterr()
    assert ldka('list', '--registry', str(root)) == 0
    out = capsys.readouterr().out
    broken = [line for line in out.splitlines() if 'BROKEN' in line]
    assert len(broken) == 1 and 'v0002' in broken[0] and 'unreadable' in broken[0], out
    assert 'ACTIVE is unusable' in out and "'garbage'" in out
    assert ldka('list', '--json', '--registry', str(root)) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [b['id'] for b in listing['broken']] == ['v0002']
    assert [v['id'] for v in listing['versions']] == ['v0001'] and listing['active'] is None
    assert ldka('verify', '--registry', str(root)) == 1
    problems = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith('PROBLEM')]
    assert len(problems) == 3, problems
    assert any(p.startswith('PROBLEM ACTIVE pointer') for p in problems)
    assert any(p.startswith('PROBLEM v0002: manifest') and str(manifest) in p
               for p in problems)
    assert any(p.startswith('PROBLEM v0007: manifest: has no manifest.json') for p in problems)
    assert ldka('verify', 'v0001', '--registry', str(root)) == 0
    capsys.readouterr()
    assert ldka('verify', 'v0002', '--registry', str(root)) == 1
    assert capsys.readouterr().out.startswith('PROBLEM v0002: manifest')
    assert ldka('verify', 'v0007', '--registry', str(root)) == 1
    assert ldka('verify', 'v0009', '--registry', str(root)) == 2
    assert 'unknown model version' in capsys.readouterr().err
