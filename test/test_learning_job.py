# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The learning job as a real child process: phases, result, cancel, bad input, determinism.

The base model is really trained (a few dozen iterations on CamVid frames, cached under
``build/test_cache`` keyed by the sources that shape it) with ``car``, ``pedestrian`` and
``bicyclist`` folded into background; the operator then "labels" ``car`` on real CamVid
frames (the CamVid car masks), and the job learns it as a new class.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_ROOT = REPO_ROOT / 'build' / 'test_cache'
#: Graph input size of the test model (small: 2 CPU cores).
INPUT_HW = (96, 128)
#: CamVid ids (project numbering) the base model learns; car (9), pedestrian (10) and
#: bicyclist (11) become background and are taught later by "the operator".
BASE_IDS = list(range(1, 9))
CAR_ID = 9
BASE_ITERATIONS = 40
BASE_SEED = 0  # the base model's initialisation (see _build_base_registry)
#: Sources whose change invalidates the cached base model.
_SHAPING = ('ldka_ros/learning/model.py', 'ldka_ros/learning/steps.py',
            'ldka_ros/learning/checkpoint.py', 'ldka_ros/learning/losses.py',
            'ldka_ros/inference/export.py', 'ldka_ros/registry/registry.py',
            'ldka_ros/registry/manifest.py', 'ldka_ros/learning/classes.py')


def _cache_key(camvid: Path) -> str:
    # The data set is part of the key: the full set and the shipped fixture give two models.
    digest = hashlib.sha256(
        f'{INPUT_HW}{BASE_IDS}{BASE_ITERATIONS}{BASE_SEED}{camvid.resolve()}'.encode())
    for rel in _SHAPING:
        digest.update((REPO_ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


def _build_base_registry(root: Path, camvid: Path) -> None:
    """Train the tiny base model on real CamVid frames and publish it as v0001."""
    from ldka_ros.inference.export import export_onnx
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.classes import CAMVID_CLASS_NAMES, ClassRegistry
    from ldka_ros.learning.data import CamVidDataset, LabelMapped, Resize
    from ldka_ros.learning.model import build_model, ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights
    from ldka_ros.learning.steps import TrainConfig, train_base
    from ldka_ros.registry import ModelRegistry
    import torch

    # One thread: on 2 shared cores OpenMP's spinning threads make training several times
    # slower (measured: 0.2 s against 1.2 s per iteration with 2 threads under load).
    torch.set_num_threads(1)
    # The decoder's and classifier's initial weights come from torch's global generator:
    # unseeded, they depended on which tests ran before in the same process, and with
    # them the base model and the gate tests' outcomes.
    torch.manual_seed(BASE_SEED)
    weights = find_local_weights('efficientnet_lite0')
    model = build_model(ModelConfig(backbone='efficientnet_lite0', num_slots=16,
                                    decoder_channels=32,
                                    pretrained=str(weights) if weights else None))
    base = CamVidDataset(camvid, 'train', transform=Resize(INPUT_HW))
    lut = np.arange(256, dtype=np.uint8)
    lut[[CAR_ID, 10, 11]] = 0
    # Every 4th of the first 48 frames; all frames of a small set (the shipped fixture).
    indices = range(0, 48, 4) if len(base) >= 48 else range(len(base))
    subset = LabelMapped(base, list(indices), lut)
    cfg = TrainConfig(iterations=BASE_ITERATIONS, batch_size=4, crop=INPUT_HW, lr=0.02,
                      device='cpu', seed=0)
    trained = train_base(model, subset, BASE_IDS, cfg, collect_features=False).model
    classes = ClassRegistry(16)
    for name in CAMVID_CLASS_NAMES[:len(BASE_IDS)]:
        classes.add(name, step=0)
    work = root.parent / (root.name + '.work')
    work.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(work / 'checkpoint.pt', trained, classes, meta={'step': 0})
    onnx_path = work / 'model.onnx'
    export_onnx(trained, onnx_path, INPUT_HW)
    registry = ModelRegistry(root, create=True)
    registry.publish({'checkpoint': ckpt, 'onnx': onnx_path},
                     [c.to_dict() for c in classes], parent=None, step=0,
                     extra={'input_hw': list(INPUT_HW)}, activate=True)
    shutil.rmtree(work)


def base_registry(dest: Path, camvid: Path) -> Path:
    """Copy the cached base registry (building it once) to ``dest``; return ``dest``."""
    cached = CACHE_ROOT / f'base_{_cache_key(camvid)}' / 'registry'
    if not (cached / 'ACTIVE').is_file():
        tmp = CACHE_ROOT / f'.build-{cached.parent.name}-{os.getpid()}'
        shutil.rmtree(tmp, ignore_errors=True)
        import torch

        threads = torch.get_num_threads()
        try:
            _build_base_registry(tmp / 'registry', camvid)
        finally:
            torch.set_num_threads(threads)
        try:
            os.replace(tmp, cached.parent)
        except OSError:  # built concurrently by another run: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cached, dest)
    return dest


def camvid_car_frames(camvid: Path, count: int, size=(180, 240)) -> list[tuple]:
    """Return ``count`` real (rgb, car mask) pairs from CamVid val with a large car."""
    import cv2

    from ldka_ros.learning.data import read_label, read_rgb

    out = []
    images = sorted((camvid / 'val' / 'images').glob('*'))
    for path in images:
        label = read_label(camvid / 'val' / 'labels' / (path.stem + '.png'))
        mask = label == CAR_ID - 1  # stored CamVid ids are 0-based
        if mask.mean() < 0.04:
            continue
        rgb = cv2.resize(read_rgb(path), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        small = cv2.resize(mask.astype(np.uint8), (size[1], size[0]),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
        out.append((rgb, small))
        if len(out) == count:
            break
    assert len(out) == count, f'only {len(out)} CamVid val frames with a large car'
    return out


def label_frames(store_root: Path, frames: list[tuple], name: str = 'car',
                 class_id: int = CAR_ID) -> list[str]:
    """Store operator frames the way the learner node does; return the frame ids."""
    from ldka_ros.learning.frame_store import FrameStore

    classes_path = store_root / 'classes.json'
    store = FrameStore(store_root, classes_path=classes_path)
    return [store.add(rgb, mask, name, class_id).frame_id for rgb, mask in frames]


def write_spec(path: Path, **fields) -> Path:
    """Write a job spec JSON file."""
    path.write_text(json.dumps(fields))
    return path


def run_job(spec: Path, timeout: float = 240.0) -> tuple[int, list[dict], str]:
    """Run the job module; return (exit code, parsed stdout lines, stderr)."""
    proc = subprocess.run([sys.executable, '-m', 'ldka_ros.app.job', '--spec', str(spec)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)})
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines, proc.stderr


@pytest.fixture
def setup_job(tmp_path, camvid_root):
    """Return (registry path, frame store path, frame ids) with 5 labelled car frames."""
    registry = base_registry(tmp_path / 'registry', camvid_root)
    store = tmp_path / 'frames'
    ids = label_frames(store, camvid_car_frames(camvid_root, 5))
    return registry, store, ids


def _spec(tmp_path, registry, store, **over) -> Path:
    fields = {'registry_path': str(registry), 'frame_store_path': str(store),
              'max_iterations': 4, 'batch_size': 2, 'device': 'cpu', 'engine': 'auto',
              'seed': 3, 'num_threads': 1}
    fields.update(over)
    return write_spec(tmp_path / 'job.json', **fields)


@pytest.mark.slow
def test_job_runs_every_phase_and_publishes(tmp_path, setup_job):
    from ldka_ros.learning.checkpoint import load_checkpoint
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros.registry import ModelRegistry

    registry_path, store_path, ids = setup_job
    code, lines, err = run_job(_spec(tmp_path, registry_path, store_path))
    assert code == 0, err[-3000:]
    progress = [line for line in lines if 'phase' in line]
    phases = list(dict.fromkeys(line['phase'] for line in progress))
    assert phases == ['preparing', 'training', 'exporting', 'building_engine', 'validating',
                      'publishing']
    values = [line['progress'] for line in progress]
    assert values == sorted(values) and values[-1] == pytest.approx(1.0)
    training = [line for line in progress
                if line['phase'] == 'training' and line['losses'] and 'message' not in line]
    assert len(training) == 4 and all(np.isfinite(list(t['losses'].values())).all()
                                      for t in training)
    assert {'pml', 'kd'} <= set(training[0]['losses'])
    engine = [line for line in progress if line['phase'] == 'building_engine'][-1]
    assert engine['message'].startswith('skipped: ')
    result = lines[-1]['result']
    assert result['success'] and result['version_id'] == 'v0002'
    assert result['classes'] == ['car'] and result['class_names'][0] == 'car'
    assert 0.0 <= result['class_iou'][0] <= 1.0 and 0.0 <= result['miou_old'] <= 1.0
    registry = ModelRegistry(registry_path)
    manifest = registry.verify('v0002')
    assert registry.active_id() == 'v0002' and manifest.parent == 'v0001'
    assert manifest.step == 1 and CAR_ID in manifest.class_ids()
    # the rule the step applied (the spec's default), with the class it imprinted
    assert manifest.extra['train']['classifier_init'] == 'imprint'
    assert manifest.extra['train']['imprinted_classes'] == ['car']
    assert manifest.extra['train']['pseudo_label_threshold'] == pytest.approx(0.9)
    held = manifest.extra['frames']['heldout']
    assert len(held) == 1 and sorted(held + manifest.extra['frames']['train']) == sorted(ids)
    model, classes, _ = load_checkpoint(registry.artefact_path('v0002', 'checkpoint'))
    assert classes.get('car').id == CAR_ID and CAR_ID in model.active_classes()
    store = FrameStore(store_path)
    assert store.pending_classes() == {}
    assert {r.learned_in_version for r in store.frames()} == {'v0002'}


def test_job_refuses_bad_input_with_reason(tmp_path, setup_job):
    registry_path, store_path, _ = setup_job
    code, lines, _ = run_job(_spec(tmp_path, registry_path, store_path, classes=['cat']))
    assert code == 2
    assert 'no pending labelled frames' in lines[-1]['result']['message']
    assert "['cat']" in lines[-1]['result']['message']
    code, lines, _ = run_job(_spec(tmp_path, registry_path, store_path, method='magic'))
    assert code == 2 and 'method' in lines[-1]['result']['message']
    code, lines, _ = run_job(_spec(tmp_path, registry_path, store_path,
                                   classifier_init='median'))
    assert code == 2 and "classifier_init 'median' unknown" in lines[-1]['result']['message']
    code, lines, _ = run_job(_spec(tmp_path, registry_path, store_path,
                                   pseudo_label_threshold=0.2))
    assert code == 2 and 'pseudo_label_threshold must be in [0.5, 1.0]' in \
        lines[-1]['result']['message']
    code, lines, _ = run_job(_spec(tmp_path, registry_path, store_path, colour='red'))
    assert code == 2 and 'unknown job spec fields' in lines[-1]['result']['message']
    from ldka_ros.registry import ModelRegistry
    assert ModelRegistry(registry_path).version_ids() == ['v0001']


@pytest.mark.slow
def test_sigterm_cancels_between_iterations_and_publishes_nothing(tmp_path, setup_job):
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros.registry import ModelRegistry

    registry_path, store_path, _ = setup_job
    spec = _spec(tmp_path, registry_path, store_path, max_iterations=500)
    proc = subprocess.Popen([sys.executable, '-m', 'ldka_ros.app.job', '--spec',
                             str(spec)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)})
    lines = []
    try:
        for raw in proc.stdout:
            lines.append(json.loads(raw))
            if lines[-1].get('phase') == 'training' and lines[-1]['losses']:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stdout.read()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert code == 3
    result = lines[-1]['result']
    assert result['cancelled'] and 'SIGTERM' in result['message']
    assert ModelRegistry(registry_path).version_ids() == ['v0001']
    assert sum(FrameStore(store_path).pending_classes().values()) == 5


@pytest.mark.slow
def test_same_seed_same_model_and_time_budget(tmp_path, setup_job, camvid_root):
    from ldka_ros.registry import ModelRegistry

    registry_path, store_path, _ = setup_job
    twin_registry = base_registry(tmp_path / 'registry2', camvid_root)
    twin_store = tmp_path / 'frames2'
    shutil.copytree(store_path, twin_store)
    digests = []
    for reg, store in ((registry_path, store_path), (twin_registry, twin_store)):
        code, lines, err = run_job(_spec(tmp_path, reg, store, max_iterations=3))
        assert code == 0, err[-2000:]
        manifest = ModelRegistry(reg).get(lines[-1]['result']['version_id'])
        digests.append(manifest.artefacts['onnx'].sha256)
    assert digests[0] == digests[1]
    # A wall-clock budget ends training early; the step is still published.
    third = tmp_path / 'frames3'
    label_frames(third, camvid_car_frames(camvid_root, 2), name='vehicle', class_id=10)
    code, lines, err = run_job(_spec(tmp_path, registry_path, third, max_iterations=100000,
                                     max_seconds=3.0, holdout_fraction=0.0))
    assert code == 0, err[-2000:]
    result = lines[-1]['result']
    assert result['train']['stopped_by_time_budget']
    assert 1 <= result['train']['iterations'] < 100000
    # read back from the saved training state of the stopped step
    assert result['train']['classifier_init'] == 'imprint'
    assert result['train']['imprinted_classes'] == ['vehicle']


@pytest.mark.slow
def test_diverging_training_restarts_with_a_lower_learning_rate(tmp_path, setup_job):
    from ldka_ros.registry import ModelRegistry

    registry_path, store_path, _ = setup_job
    # Without gradient clipping, lr 0.5 makes this step diverge within a few iterations:
    # the loss turns NaN, or (with other base-model bits) the weights stay finite, up to
    # ~1e9, while the logits overflow; the loop raises either way, where the second case
    # used to reach the export and fail its parity check. The recipe's clipping keeps
    # such rates finite.
    code, lines, err = run_job(_spec(tmp_path, registry_path, store_path, lr=0.5,
                                     grad_clip=0.0, max_iterations=5))
    result = lines[-1]['result']
    messages = [line.get('message', '') for line in lines]
    assert any('retrying with lr 0.125' in m for m in messages), messages
    progress = [line['progress'] for line in lines if 'progress' in line]
    assert progress == sorted(progress)
    registry = ModelRegistry(registry_path)
    if code == 0:  # a lower rate converged: published, with the retries recorded
        retries = result['train']['lr_retries']
        assert 1 <= len(retries) <= 2 and 'diverged at lr 0.5' in retries[0]
        assert result['train']['lr'] == pytest.approx(0.5 / 4 ** len(retries))
        assert registry.active_id() == result['version_id'] == 'v0002'
    else:  # every rate diverged (base-model bits differ across CPUs): a clear refusal
        assert code == 1 and not result['success'], err[-2000:]
        assert 'diverged at every learning rate tried' in result['message']
        assert all(f'diverged at lr {lr:g}' in result['message'] for lr in (0.5, 0.125,
                                                                            0.03125))
        assert 'Nothing was published' in result['message']
        assert registry.version_ids() == ['v0001'] and registry.active_id() == 'v0001'
        from ldka_ros.learning.frame_store import FrameStore

        assert all(r.pending for r in FrameStore(store_path).frames())  # labels kept


@pytest.mark.slow
def test_quality_gate_refuses_a_starved_model_and_publishes_a_trained_one(tmp_path,
                                                                          setup_job):
    """
    One gate (car IoU >= 0.04, old classes lose at most 90 %): 2 iterations fail, 20 pass.

    Measured with this seed, the seeded base model and the MiB start of the new row
    (learner's LDKA, 2026-12-06): 2 iterations give car IoU 0.0 on the held-out frame
    (full set and fixture), 20 give 0.203 (full set) and 0.359 (fixture). Base models
    built from other initial weights collapsed background within 20 iterations on the
    full set (retention 0.000, with SKD's stabilisers on or off), which the gate refused
    as well: the base is seeded so that this test checks one known model. The learner's
    default start (a row imprinted from the labelled pixels) is no starved model: after 2
    iterations it already gave car IoU 0.195 on the full set, so this test starts the row
    the MiB way to starve the step for real.
    """
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros.registry import ModelRegistry

    registry_path, store_path, ids = setup_job
    gate = {'min_new_iou': 0.04, 'max_old_drop': 0.9, 'classifier_init': 'mib'}
    code, lines, err = run_job(_spec(tmp_path, registry_path, store_path, max_iterations=2,
                                     **gate))
    result = lines[-1]['result']
    assert code == 2 and not result['success'], err[-2000:]
    assert 'quality gate refused the new model: car IoU' in result['message']
    assert 'frames stay pending' in result['message']
    registry = ModelRegistry(registry_path)
    assert [m.id for m in registry.list_versions()] == ['v0001']
    assert registry.active_id() == 'v0001'
    assert all(r.pending for r in FrameStore(store_path).frames())
    code, lines, err = run_job(_spec(tmp_path, registry_path, store_path, max_iterations=20,
                                     **gate))
    result = lines[-1]['result']
    assert code == 0 and result['success'], err[-2000:]
    assert result['class_iou'][0] >= 0.04 and registry.active_id() == 'v0002'


def test_quality_gate_refuses_one_collapsed_old_class_that_the_mean_hides():
    """
    The starved demo step's figures: background kept 0.385 of the old model's pixels.

    The mean retention over six old classes was still 0.827, so a gate on the mean alone
    (ceiling 0.3) published that model; the per-class check refuses it and names the class.
    """
    from ldka_ros.app.job_spec import JobSpec
    from ldka_ros.app.job_validation import quality_gate, QualityRefused

    spec = JobSpec(registry_path='/r', frame_store_path='/f', min_new_iou=0.0,
                   max_old_drop=0.3)
    kept = {'background': 0.385, 'tray': 0.95, 'teddy': 0.9, 'soccerball': 0.96,
            'jenga': 0.88, 'mug': 0.885}
    metrics = {'class_iou': {'duck': 0.5}, 'miou_old': float(np.mean(list(kept.values()))),
               'old_class_retention': kept, 'taught_class_iou': {}}
    assert metrics['miou_old'] > 0.8
    with pytest.raises(QualityRefused, match=r'background keeps only 0\.385 .*drop 0\.615'):
        quality_gate(spec, metrics)
    metrics['old_class_retention'] = {**kept, 'background': 0.75}
    quality_gate(spec, metrics)  # every class within the ceiling: published


def test_learner_steps_keep_the_hard_background_the_robot_scenes_chose():
    """
    The learner's LDKA keeps METHOD's hard background, unlike the library default.

    The CamVid benchmark's default trains the rest of background with MiB's unbiased CE;
    on the robot's decision scenes that lost the new object and old classes, so the job
    must not inherit it with the spec's init and threshold. SKD's stabilisers are off in
    both (each decision split said so).
    """
    from ldka_ros.app.job import learner_ldka_config
    from ldka_ros.app.job_spec import JobSpec
    from ldka_ros.learning.steps import LDKAConfig

    library = LDKAConfig()
    assert library.pseudo_rest_unbiased and not library.dss and not library.pert
    cfg = learner_ldka_config(JobSpec(registry_path='/r', frame_store_path='/f',
                                      pseudo_label_threshold=0.8, classifier_init='mib'))
    assert not cfg.pseudo_rest_unbiased and not cfg.dss and not cfg.pert
    assert cfg.tau == 0.8 and cfg.init == 'mib' and cfg.pml and cfg.kd and not cfg.gfr
