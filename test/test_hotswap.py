# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Tests for the frame-safe hot-swap: real ONNX Runtime sessions of a really trained model.

Two exports of one trained SegModel differ only in their active slots (A: all twelve
CamVid slots, B: slots 6..11 switched off), so they give different class ids on the same
real frame. Every output of an inference loop running through swaps must be exactly the
output of the backend whose version it is tagged with; nothing may fail or mix.
B also serves as the "forgetful" new version for validation (it lost tree, car, ...).
"""
from copy import deepcopy
from pathlib import Path
import threading
import time
from types import SimpleNamespace

from conftest import spread
from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
from ldka_ros.inference.hotswap import backend_factory_from_registry, HotSwapper
from ldka_ros.registry import ModelRegistry, VersionNotFoundError
import numpy as np
import pytest

HW = (96, 128)


def camvid_pairs(root: Path, split: str, count: int, step: int, hw=None):
    """Read real CamVid (image RGB, label in project ids) pairs, optionally resized."""
    import cv2

    lut = np.full(256, 255, np.uint8)
    lut[:11] = np.arange(1, 12)  # stored 0..10 -> 1..11, void (11) -> 255
    paths = spread(sorted((root / split / 'images').glob('*.jpg')), count, step)
    pairs = []
    for path in paths:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        label = lut[cv2.imread(str(root / split / 'labels' / f'{path.stem}.png'),
                               cv2.IMREAD_UNCHANGED)]
        if hw is not None:
            image = cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
            label = cv2.resize(label, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
        pairs.append((np.ascontiguousarray(image), label))
    return pairs


def train_tiny(camvid_root: Path):
    """
    Train decoder + classifier of an ImageNet-initialised EfficientNet-Lite0 SegModel.

    The backbone stays frozen and its features are computed once, so the fixture
    trains in seconds on two busy cores yet gives real, non-trivial CamVid mIoU.
    """
    import torch
    import torch.nn.functional as F

    from ldka_ros.learning.model import ModelConfig, SegModel
    from ldka_ros.learning.pretrained import find_local_weights

    weights = find_local_weights('efficientnet_lite0')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads are several times slower on a shared CPU
    try:
        torch.manual_seed(0)
        model = SegModel(ModelConfig(backbone='efficientnet_lite0', num_slots=12,
                                     decoder_channels=32,
                                     pretrained=str(weights) if weights else None))
        model.set_active(list(range(12)))
        model.eval()
        pairs = camvid_pairs(camvid_root, 'train', 32, 3, HW)
        images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2)
        labels = torch.from_numpy(np.stack([p[1] for p in pairs])).long()
        with torch.no_grad():
            feats = model.backbone(model.normalize(images.float() / 255))
        low, high = feats[model.low_index], feats[-1]
        params = list(model.decoder.parameters()) + list(model.classifier.parameters())
        opt = torch.optim.AdamW(params, lr=5e-3)
        model.decoder.train()
        gen = torch.Generator().manual_seed(0)
        for _ in range(100):
            idx = torch.randperm(len(pairs), generator=gen)[:8]
            logits = F.interpolate(model.classify(model.decoder(low[idx], high[idx])),
                                   size=HW, mode='bilinear', align_corners=False)
            loss = F.cross_entropy(logits, labels[idx], ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def models(tmp_path_factory, camvid_root):
    from ldka_ros.inference.export import export_onnx

    out = tmp_path_factory.mktemp('hotswap')
    model_a = train_tiny(camvid_root)
    model_b = deepcopy(model_a)
    model_b.set_active(list(range(6, 12)), active=False)
    a_path, b_path = out / 'a.onnx', out / 'b.onnx'
    export_onnx(model_a, a_path, input_hw=HW)
    export_onnx(model_b, b_path, input_hw=HW)
    frames = [img for img, _ in camvid_pairs(camvid_root, 'val', 4, 25, HW)]
    expected = {}
    for key, path in (('a', a_path), ('b', b_path)):
        backend = ort(path).load()
        expected[key] = [backend.infer(f[None]) for f in frames]
        backend.release()
    for ea, eb in zip(expected['a'], expected['b']):
        # Precondition of the mixing check: the two models disagree on every frame.
        assert not np.array_equal(ea.class_ids, eb.class_ids)
    validation = camvid_pairs(camvid_root, 'val', 8, 12)  # full size; the swapper resizes
    return SimpleNamespace(a=a_path, b=b_path, frames=frames, expected=expected,
                           validation=validation, dir=out)


def ort(path):
    return OnnxRuntimeBackend(path, providers='cpu', intra_op_threads=1)


class Factory:
    """Backend factory that remembers what it built (to check releases afterwards)."""

    def __init__(self, path, gate: threading.Event | None = None) -> None:
        self.path, self.gate, self.built = path, gate, []

    def __call__(self):
        if self.gate is not None:
            assert self.gate.wait(60)
        backend = ort(self.path)
        self.built.append(backend)
        return backend


def assert_output_of(result, expected, frame_index):
    exp = expected[frame_index]
    assert np.array_equal(result.class_ids, exp.class_ids)
    np.testing.assert_allclose(result.confidence, exp.confidence, rtol=1e-5, atol=1e-6)


def test_swap_under_concurrent_inference_never_mixes(models):
    initial = ort(models.a)
    swapper = HotSwapper(initial, 'A')
    version_model = {'A': 'a', 'B': 'b', 'A2': 'a', 'B2': 'b'}
    records, errors = [], []
    stop = threading.Event()

    def loop():
        i = 0
        while not stop.is_set():
            k = i % len(models.frames)
            try:
                result, version = swapper.infer_versioned(models.frames[k][None])
                records.append((time.time(), k, version, result))
            except Exception as exc:  # noqa: BLE001 - every failure is a test failure
                errors.append(exc)
            i += 1

    thread = threading.Thread(target=loop)
    thread.start()
    factories, reports = [], []
    try:
        while len(records) < 5:
            time.sleep(0.01)
        for target, version in (('b', 'B'), ('a', 'A2'), ('b', 'B2')):
            factory = Factory(getattr(models, target))
            factories.append(factory)
            started = time.time()
            report = swapper.swap_to(factory, version).result(timeout=120)
            assert report.ok, report.reason
            reports.append((started, report))
            deadline = time.time() + 60
            while not any(r[2] == version for r in records[-3:]) and time.time() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join(60)
    assert errors == []
    for _, k, version, result in records:
        assert_output_of(result, models.expected[version_model[version]], k)
    order = ['A', 'B', 'A2', 'B2']
    seen = [order.index(version) for _, _, version, _ in records]
    assert seen == sorted(seen) and set(seen) == {0, 1, 2, 3}
    # The loop kept running while the new backends loaded and warmed up.
    during = sum(1 for started, rep in reports for t, *_ in records
                 if started <= t <= rep.switched_at)
    assert during > 0
    # Every replaced backend was released; the serving one was not.
    assert not initial.loaded
    assert [f.built[0].loaded for f in factories] == [False, False, True]
    swapper.close()
    assert not factories[-1].built[0].loaded
    with pytest.raises(RuntimeError, match='closed'):
        swapper.infer(models.frames[0][None])


def test_old_backend_released_only_after_its_last_inference(models):
    initial = ort(models.a)
    swapper = HotSwapper(initial, 'A')
    switched = threading.Event()
    swapper.add_listener(lambda ev: switched.set() if ev.stage == 'switched' else None)
    with swapper.acquire() as (leased, version):
        future = swapper.swap_to(Factory(models.b), 'B')
        assert switched.wait(120)
        assert swapper.current_version == 'B' and version == 'A'
        # New calls already go to B, but the leased old backend is still usable...
        assert_output_of(swapper.infer(models.frames[1][None]), models.expected['b'], 1)
        time.sleep(0.2)
        assert not future.done() and leased.loaded
        assert_output_of(leased.infer(models.frames[1][None]), models.expected['a'], 1)
    # ...and it is released as soon as the lease (the last in-flight call) ends.
    report = future.result(timeout=60)
    assert report.ok and not initial.loaded
    swapper.close()


def test_failed_load_keeps_old_backend_serving(models, tmp_path):
    swapper = HotSwapper(ort(models.a), 'A')
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(models.a.read_bytes()[:100_000])
    events = []
    swapper.add_listener(lambda ev: events.append((ev.stage, ev.version_id)))
    report = swapper.swap_to(Factory(corrupt), 'broken').result(timeout=60)
    assert not report.ok and report.reason.startswith('load of broken failed')
    assert report.previous_version == 'A' and report.switched_at is None
    report = swapper.swap_to(Factory(tmp_path / 'absent.onnx'), 'absent').result(timeout=60)
    assert not report.ok and 'FileNotFoundError' in report.reason
    report = swapper.swap_to(lambda: 'not a backend', 'junk').result(timeout=60)
    assert not report.ok and 'not a Backend' in report.reason
    assert swapper.current_version == 'A'
    assert_output_of(swapper.infer(models.frames[0][None]), models.expected['a'], 0)
    assert ('failed', 'broken') in events and ('started', 'absent') in events
    assert swapper.describe()['swaps_failed'] == 3
    swapper.close()


def test_validation_refuses_a_model_that_forgot_old_classes(models):
    swapper = HotSwapper(ort(models.a), 'A')
    forgetful = Factory(models.b)
    report = swapper.swap_to(forgetful, 'B', validation_frames=models.validation,
                             tolerance=0.05).result(timeout=120)
    metrics = report.metrics
    assert metrics['old_miou_serving'] > 0.2  # the trained model is really segmenting
    assert not report.ok and 'old-class mIoU falls' in report.reason
    assert metrics['old_miou_new'] < metrics['old_miou_serving'] - 0.05
    assert {6, 9} & set(metrics['old_classes'])  # tree/car: known before, lost by B
    assert not forgetful.built[0].loaded  # the refused backend was released
    assert swapper.current_version == 'A'
    assert_output_of(swapper.infer(models.frames[2][None]), models.expected['a'], 2)
    # The same model as a new version passes with equal mIoU...
    report = swapper.swap_to(Factory(models.a), 'A2',
                             validation_frames=models.validation).result(timeout=120)
    assert report.ok, report.reason
    assert report.metrics['old_miou_new'] == pytest.approx(report.metrics['old_miou_serving'])
    # ...and a loose tolerance lets the forgetful one through.
    report = swapper.swap_to(Factory(models.b), 'B', validation_frames=models.validation,
                             tolerance=1.0).result(timeout=120)
    assert report.ok and swapper.current_version == 'B'
    swapper.close()


def test_user_validator_can_refuse(models):
    calls = []

    def validator(new, old):
        calls.append((new.describe()['artefact'], old.describe()['artefact']))
        if new.describe()['artefact'] == str(models.b):
            raise ValueError('latency budget exceeded')
        return {'checked': True}

    swapper = HotSwapper(ort(models.a), 'A', validator=validator)
    report = swapper.swap_to(Factory(models.b), 'B').result(timeout=60)
    assert not report.ok and 'latency budget exceeded' in report.reason
    report = swapper.swap_to(Factory(models.a), 'A2').result(timeout=60)
    assert report.ok and report.metrics['checked'] is True
    assert calls[0] == (str(models.b), str(models.a))
    swapper.close()


def test_requests_during_a_swap_queue_and_the_newest_wins(models):
    swapper = HotSwapper(ort(models.a), 'A')
    stages = []
    started = threading.Event()

    def listen(event):
        stages.append((event.stage, event.version_id))
        if event.stage == 'started' and event.version_id == 'B':
            started.set()

    swapper.add_listener(listen)
    gate = threading.Event()
    first = swapper.swap_to(Factory(models.b, gate), 'B')
    assert started.wait(30)
    second = swapper.swap_to(Factory(models.a), 'A2')
    third = swapper.swap_to(Factory(models.b), 'B3')
    superseded = second.result(timeout=5)  # resolved at once, without loading anything
    assert not superseded.ok and 'superseded by a newer request for B3' in superseded.reason
    assert swapper.swap_in_progress and swapper.current_version == 'A'
    gate.set()
    assert first.result(timeout=120).ok and third.result(timeout=120).ok
    assert swapper.current_version == 'B3' and not swapper.swap_in_progress
    assert ('superseded', 'A2') in stages and ('started', 'A2') not in stages
    assert stages[:2] == [('queued', 'B'), ('started', 'B')]
    assert stages.index(('completed', 'B')) < stages.index(('started', 'B3'))
    swapper.close()
    late = swapper.swap_to(Factory(models.a), 'A4').result(timeout=5)
    assert not late.ok and 'closed' in late.reason


def test_swap_from_registry_verifies_digests(models, tmp_path):
    reg = ModelRegistry(tmp_path / 'reg', create=True)
    legend_a = [{'id': i, 'name': f'c{i}', 'color': [i, i, i]} for i in range(12)]
    v1 = reg.publish({'onnx': models.a}, legend_a, activate=True)
    v2 = reg.publish({'onnx': models.b}, legend_a[:6], parent=v1.id)
    kwargs = {'providers': 'cpu', 'intra_op_threads': 1}
    swapper = HotSwapper(backend_factory_from_registry(reg, v1.id, **kwargs)(), v1.id)
    report = swapper.swap_to(backend_factory_from_registry(reg, v2.id, **kwargs),
                             v2.id).result(timeout=60)
    assert report.ok and swapper.current_version == 'v0002'
    result, version = swapper.infer_versioned(models.frames[3][None])
    assert version == 'v0002'
    assert_output_of(result, models.expected['b'], 3)
    # A registry file changed after publishing is never loaded.
    stored = reg.artefact_path(v1.id, 'onnx')
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0x01
    stored.write_bytes(bytes(data))
    report = swapper.swap_to(backend_factory_from_registry(reg, v1.id, **kwargs),
                             v1.id).result(timeout=60)
    assert not report.ok and 'sha256' in report.reason and swapper.current_version == 'v0002'
    assert_output_of(swapper.infer(models.frames[3][None]), models.expected['b'], 3)
    with pytest.raises(VersionNotFoundError):
        backend_factory_from_registry(reg, 'v0042')
    swapper.close()


def test_background_nice_lowers_only_the_swap_thread(models):
    import os

    def nice_of_this_thread():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice_of_this_thread()
    seen = []
    swapper = HotSwapper(ort(models.a), 'A', background_nice=5)
    swapper.add_listener(lambda ev: seen.append((ev.stage, ev.version_id,
                                                 nice_of_this_thread())))
    assert swapper.swap_to(Factory(models.b), 'B').result(timeout=60).ok
    assert swapper.swap_to(Factory(models.a), 'A2').result(timeout=60).ok
    nice = {(stage, version): value for stage, version, value in seen}
    # Loading happens at normal priority, warmup/validation after it at +5; the next
    # swap starts on a fresh thread at normal priority again.
    assert nice[('started', 'B')] == base and nice[('switched', 'B')] == min(19, base + 5)
    assert nice[('started', 'A2')] == base
    assert nice_of_this_thread() == base
    assert_output_of(swapper.infer(models.frames[0][None]), models.expected['a'], 0)
    swapper.close()


def test_paced_background_inferences_follow_served_frames(models):
    """With a stream running, each warmup/validation inference waits for a served frame."""
    swapper = HotSwapper(ort(models.a), 'A', pace_background=True)
    marks = []

    class Recording(OnnxRuntimeBackend):
        def infer(self, batch):
            marks.append(swapper._served_seq)
            return super().infer(batch)

    stop = threading.Event()

    def stream():
        while not stop.is_set():
            swapper.infer(models.frames[0][None])
            time.sleep(0.03)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        time.sleep(0.2)
        report = swapper.swap_to(lambda: Recording(models.a, providers='cpu',
                                                   intra_op_threads=1),
                                 'A2', validation_frames=models.validation[:2]).result(120)
    finally:
        stop.set()
        thread.join(30)
    assert report.ok, report.reason
    # 3 warmup + 1 smoke test + 2 validation frames, each after its own served frame;
    # later entries are the stream's own calls on the new backend.
    background = marks[:6]
    assert all(b > a for a, b in zip(background, background[1:])), marks
    swapper.close()
