# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Learning steps on real CamVid images: learning, shapes, determinism, resume, errors."""
import dataclasses
import os
from pathlib import Path
import subprocess
import sys
import threading

from ldka_ros.learning.evaluate import evaluate
from ldka_ros.learning.protocols import eval_set, step_train_set
from ldka_ros.learning.steps import (batch_plan, Cancelled, LDKAConfig, learn_step, METHODS,
                                     ProgressEvent, STEP_RECIPE)
from learning_fixtures import (BASE_CLASSES, CROP, NEW_CLASSES, require_camvid, tiny_base,
                               tiny_config, tiny_protocol, tiny_train, tiny_val)
import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def base():
    require_camvid()
    return tiny_base()


@pytest.fixture(scope='module')
def step_data():
    return step_train_set(tiny_train(), tiny_protocol(), 1)


def _few(dataset, n):
    from ldka_ros.learning.data import LabelMapped

    return LabelMapped(dataset.dataset, dataset.indices[:n], dataset.label_map,
                       classes=dataset.classes)


@pytest.fixture(scope='module')
def ldka_step(base, step_data):
    events = []
    res = learn_step(base.model, step_data, NEW_CLASSES, 'ldka',
                     tiny_config(iterations=40, **STEP_RECIPE),  # the robot's recipe
                     feature_bank=base.feature_bank, progress=events.append)
    return res, events


def test_ldka_step_learns_the_new_class_and_reports_old(base, ldka_step):
    res, events = ldka_step
    proto = tiny_protocol()
    before = evaluate(base.model, eval_set(tiny_val(), proto, 0), proto.seen_classes(0),
                      proto.seen_classes(0), [])
    after = evaluate(res.model, eval_set(tiny_val(), proto, 1), proto.seen_classes(1),
                     proto.old_classes(1), NEW_CLASSES)
    car = after.per_class_iou[NEW_CLASSES[0]]
    assert car > 0.05, f'new class IoU {car:.3f} after the step'
    # old classes are reported and mostly kept (fine-tuning alone would erase them)
    assert 0.5 * before.miou_all < after.miou_old <= 1.0
    for cid in BASE_CLASSES:
        assert 0.0 <= after.per_class_iou[cid] <= 1.0
    # progress: one event per iteration, in order, with every active loss term
    train_events = [e for e in events if e.phase == 'ldka']
    assert [e.iteration for e in train_events] == list(range(1, 41))
    assert isinstance(train_events[-1], ProgressEvent)
    switches = ('pml', 'kd', 'dss', 'pert', 'mad')
    active = {name for name in switches if getattr(LDKAConfig(), name)}
    assert active == {'pml', 'kd', 'mad'}  # the defaults: SKD's stabilisers off
    assert set(train_events[-1].losses) & set(switches) == active
    assert res.seconds_per_iter > 0 and len(res.history) == 40


def test_adding_classes_changes_no_tensor_shape(base, ldka_step):
    res, _ = ldka_step
    old_state, new_state = base.model.state_dict(), res.model.state_dict()
    assert old_state.keys() == new_state.keys()
    for key in old_state:
        assert old_state[key].shape == new_state[key].shape, key
    assert res.model.active_classes() == sorted([0, *BASE_CLASSES, *NEW_CLASSES])
    assert base.model.active_classes() == sorted([0, *BASE_CLASSES])  # old model untouched
    x = torch.rand(1, 3, *CROP)
    with torch.no_grad():
        assert base.model(x).logits.shape == res.model(x).logits.shape


def test_mib_init_keeps_old_predictions(base, step_data):
    res = learn_step(base.model, step_data, NEW_CLASSES, 'mib',
                     tiny_config(iterations=1, lr=1e-12, freeze_bn=True))
    x, _ = tiny_val()[0]
    with torch.no_grad():
        old = torch.softmax(base.model(x[None]).logits, 1)
        new = torch.softmax(res.model(x[None]).logits, 1)
    folded = new[:, 0] + new[:, NEW_CLASSES].sum(1)
    assert torch.allclose(folded, old[:, 0], atol=1e-3)
    assert torch.allclose(new[:, BASE_CLASSES], old[:, BASE_CLASSES], atol=1e-3)


def _own_pixels_won(model, dataset, cid):
    """Fraction of ``cid``'s pixels (feature resolution) where ``cid`` has the top logit."""
    from ldka_ros.learning.steps import feature_labels

    won = total = 0
    with torch.no_grad():
        for i in range(len(dataset)):
            image, label = dataset[i]
            out = model.eval()(image[None])
            labels = feature_labels(label[None].long(), tuple(out.features.shape[-2:]),
                                    model.num_slots)
            top = model.classify(out.features).argmax(1)
            mask = labels == cid
            won += int((top[mask] == cid).sum())
            total += int(mask.sum())
    assert total > 0, f'no pixels of class {cid} in the step data'
    return won / total


def test_imprint_init_starts_the_new_class_on_its_own_features(base, step_data):
    from ldka_ros.learning.steps import collect_feature_bank

    data = _few(step_data, 6)
    cfg = tiny_config(iterations=1, lr=1e-12, freeze_bn=True)
    imprinted = learn_step(base.model, data, NEW_CLASSES, 'ldka', cfg,
                           ldka=LDKAConfig(init='imprint'))
    imprint = imprinted.model
    mib_step = learn_step(base.model, data, NEW_CLASSES, 'mib', cfg)
    mib = mib_step.model
    car = NEW_CLASSES[0]
    # the step says which rule it applied (the job records this, not its request)
    assert (imprinted.classifier_init, imprinted.imprinted_classes) == ('imprint', [car])
    assert (mib_step.classifier_init, mib_step.imprinted_classes) == ('mib', [])
    asked = learn_step(base.model, data, NEW_CLASSES, 'finetune', cfg)  # keeps its rows
    assert asked.classifier_init is None
    # MiB's loss takes the imprinted start too (the learner's method: mib)
    mib_imprinted = learn_step(base.model, data, NEW_CLASSES, 'mib', cfg,
                               ldka=LDKAConfig(init='imprint'))
    assert mib_imprinted.classifier_init == 'imprint'
    assert torch.allclose(mib_imprinted.model.classifier.weight[car],
                          imprint.classifier.weight[car])
    mean = collect_feature_bank(base.model, data, [car], device='cpu').mean[car]
    row = imprint.classifier.weight[car].detach().flatten()
    assert float(torch.cosine_similarity(row, mean, dim=0)) > 0.999
    # old rows, background's included, are the base model's (MiB shifts background's bias)
    for cid in [0, *BASE_CLASSES]:
        assert torch.allclose(imprint.classifier.weight[cid], base.model.classifier.weight[cid])
        assert torch.allclose(imprint.classifier.bias[cid], base.model.classifier.bias[cid])
    # before any learning the imprinted class already wins part of its own pixels; MiB's
    # copy of background ties background and wins none
    assert _own_pixels_won(imprint, data, car) > 0.1
    assert _own_pixels_won(mib, data, car) < 0.01
    with pytest.raises(ValueError, match='classifier init'):
        LDKAConfig(init='zeros')


def test_frozen_backbone_step_trains_only_the_head(base, step_data):
    res = learn_step(base.model, _few(step_data, 4), NEW_CLASSES, 'ldka',
                     tiny_config(iterations=3, freeze_backbone=True, **STEP_RECIPE))
    old, new = base.model.state_dict(), res.model.state_dict()
    backbone = [k for k in old if k.startswith('backbone.')]
    assert backbone and all(torch.equal(old[k], new[k]) for k in backbone)
    head = [k for k in old if not k.startswith('backbone.') and old[k].is_floating_point()]
    assert any(not torch.equal(old[k], new[k]) for k in head)
    # the returned model is not left frozen for the step after it
    assert all(p.requires_grad for p in res.model.backbone.parameters())


@pytest.mark.parametrize('method', ['finetune', 'ldka+gfr'])
def test_same_seed_same_weights(base, step_data, method):
    data = _few(step_data, 3)  # fewer images than a batch: repeated with new crops
    cfg = tiny_config(iterations=3, lr=0.002)
    results = [learn_step(base.model, data, NEW_CLASSES, method, cfg,
                          feature_bank=base.feature_bank) for _ in range(2)]
    runs = [r.model.state_dict() for r in results]
    if method == 'ldka+gfr':  # feature replay from the base step's bank is active
        assert all('gfr' in h for h in results[0].history)
        # the returned bank adds the new class, from this step's labels
        classes = results[0].feature_bank.classes()
        assert NEW_CLASSES[0] in classes and set(BASE_CLASSES) <= set(classes)
    other = learn_step(base.model, data, NEW_CLASSES, method, tiny_config(
        iterations=3, lr=0.002, seed=1), feature_bank=base.feature_bank).model.state_dict()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    assert any(not torch.equal(runs[0][k], other[k]) for k in runs[0]
               if runs[0][k].is_floating_point())


def test_batch_plan_is_a_pure_function():
    assert batch_plan(5, 4, 3, 7) == batch_plan(5, 4, 3, 7)
    assert batch_plan(5, 4, 3, 7) != batch_plan(5, 4, 3, 8)
    assert len(batch_plan(2, 4, 0, 0)) == 4  # tiny data sets fill the batch
    with pytest.raises(ValueError, match='empty'):
        batch_plan(0, 4, 0, 0)


def test_cancel_then_resume_matches_uninterrupted_run(base, step_data, tmp_path):
    data = _few(step_data, 6)
    cfg = tiny_config(iterations=6, lr=0.002, checkpoint_every=2)
    reference = learn_step(base.model, data, NEW_CLASSES, 'ldka', cfg).model.state_dict()
    path = tmp_path / 'state.pt'
    cancel = threading.Event()

    def stop_at_3(event):
        if event.iteration == 3:
            cancel.set()

    with pytest.raises(Cancelled, match='iteration 3'):
        learn_step(base.model, data, NEW_CLASSES, 'ldka', cfg, progress=stop_at_3,
                   cancel=cancel, checkpoint_path=path)
    assert torch.load(path, weights_only=False)['iteration'] == 3
    resumed = learn_step(base.model, data, NEW_CLASSES, 'ldka', cfg, checkpoint_path=path)
    assert resumed.history[-1]['iteration'] == 6 and len(resumed.history) == 6
    state = resumed.model.state_dict()
    for key in reference:
        assert torch.equal(reference[key], state[key]), key
    # a finished state is not trained again
    again = learn_step(base.model, data, NEW_CLASSES, 'ldka', cfg, checkpoint_path=path)
    assert torch.equal(again.model.classifier.weight, resumed.model.classifier.weight)
    # a checkpoint of another configuration is refused, not silently mixed in
    with pytest.raises(ValueError, match='different run'):
        learn_step(base.model, data, NEW_CLASSES, 'mib', cfg, checkpoint_path=path)


def test_cancel_before_start():
    require_camvid()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        learn_step(tiny_base().model, step_train_set(tiny_train(), tiny_protocol(), 1),
                   NEW_CLASSES, 'finetune', tiny_config(iterations=5), cancel=cancel)


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {test_dir!r})
from learning_fixtures import NEW_CLASSES, tiny_config, tiny_protocol, tiny_train
from ldka_ros.learning.checkpoint import load_checkpoint
from ldka_ros.learning.protocols import step_train_set
from ldka_ros.learning.steps import learn_step
from ldka_ros.learning.data import LabelMapped
model, _, _ = load_checkpoint({model!r})
full = step_train_set(tiny_train(), tiny_protocol(), 1)
data = LabelMapped(full.dataset, full.indices[:6], full.label_map, classes=full.classes)
def die(event):
    if event.iteration == 4:
        os.kill(os.getpid(), signal.SIGKILL)
learn_step(model, data, NEW_CLASSES, 'mib', tiny_config(iterations=6, lr=0.002,
           checkpoint_every=2), progress=die, checkpoint_path={state!r})
"""


def test_killed_process_resumes(base, step_data, tmp_path):
    from ldka_ros.learning.checkpoint import save_checkpoint

    model_path, state = tmp_path / 'base.pt', tmp_path / 'state.pt'
    save_checkpoint(model_path, base.model, tiny_protocol().registry(16))
    script = _KILL_SCRIPT.format(test_dir=str(Path(__file__).parent), model=str(model_path),
                                 state=str(state))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert torch.load(state, weights_only=False)['iteration'] == 4
    data = _few(step_data, 6)
    cfg = tiny_config(iterations=6, lr=0.002, checkpoint_every=2)
    from ldka_ros.learning.checkpoint import load_checkpoint

    reloaded, _, _ = load_checkpoint(model_path)
    resumed = learn_step(reloaded, data, NEW_CLASSES, 'mib', cfg, checkpoint_path=state)
    assert len(resumed.history) == 6
    reference = learn_step(reloaded, data, NEW_CLASSES, 'mib', cfg)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


class _PoisonedFrames(torch.utils.data.Dataset):
    """Real CamVid frames as plain tensors; from ``poison_from`` on, images hold NaN."""

    def __init__(self, base_set, poison: bool) -> None:
        self.base_set, self.poison = base_set, poison

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        image, label = self.base_set[index]
        if self.poison:
            image = image.clone()
            image[:, :8, :8] = float('nan')
        return image, label


def test_nan_loss_names_the_term_and_keeps_checkpoint(base, step_data, tmp_path):
    path = tmp_path / 'state.pt'
    cfg = tiny_config(iterations=6, lr=0.002, checkpoint_every=2)
    cancel = threading.Event()
    clean = _PoisonedFrames(step_data, poison=False)
    with pytest.raises(Cancelled):
        learn_step(base.model, clean, NEW_CLASSES, 'ldka', cfg, cancel=cancel,
                   checkpoint_path=path,
                   progress=lambda e: cancel.set() if e.iteration == 2 else None)
    before = path.read_bytes()
    from ldka_ros.learning.steps import Diverged

    with pytest.raises(Diverged, match=r"loss term 'pml' is nan at iteration 2"):
        learn_step(base.model, _PoisonedFrames(step_data, poison=True), NEW_CLASSES, 'ldka',
                   cfg, checkpoint_path=path)
    assert path.read_bytes() == before
    state = torch.load(path, weights_only=False)
    assert all(torch.isfinite(v).all() for v in state['model'].values()
               if v.is_floating_point())
    with pytest.raises(RuntimeError, match="loss term 'ce'"):
        learn_step(base.model, _PoisonedFrames(step_data, poison=True), NEW_CLASSES,
                   'finetune', tiny_config(iterations=2))


def test_non_finite_running_statistics_count_as_divergence(base, step_data):
    """
    A step whose batch-norm statistics overflowed has finite parameters but a broken model.

    Such a model used to pass the end-of-training check (parameters only) and reached the
    export, where torch and ONNX Runtime disagreed on every pixel instead of the job
    retrying with a lower learning rate.
    """
    import copy

    from ldka_ros.learning.steps import Diverged

    broken = copy.deepcopy(base.model)
    norms = [m for m in broken.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms, 'the test model has no batch norm'
    norms[0].running_var.fill_(float('inf'))
    with pytest.raises(Diverged, match='non-finite'):
        learn_step(broken, step_data, NEW_CLASSES, 'finetune', tiny_config(iterations=2))


def test_bad_inputs_are_clear_errors(base, step_data):
    with pytest.raises(ValueError, match='known methods: ' + ', '.join(METHODS).replace(
            '+', r'\+')):
        learn_step(base.model, step_data, NEW_CLASSES, 'sgd', tiny_config())
    with pytest.raises(ValueError, match='feature bank'):
        learn_step(base.model, step_data, NEW_CLASSES, 'ldka+gfr', tiny_config())
    with pytest.raises(ValueError, match='already active'):
        learn_step(base.model, step_data, [BASE_CLASSES[0]], 'mib', tiny_config())
    with pytest.raises(ValueError, match='outside'):
        learn_step(base.model, step_data, [99], 'mib', tiny_config())
    with pytest.raises(ValueError, match='iterations'):
        tiny_config(iterations=0)
    with pytest.raises(ValueError, match='ablation stage'):
        LDKAConfig.ablation('+everything')


def test_benchmark_method_names_map_to_step_configs():
    from ldka_ros.bench.learning import method_call, parse_methods

    assert parse_methods('mib, ldka:skd,ldka:dss-shrink,mib') == [
        'mib', 'ldka:skd', 'ldka:dss-shrink']
    with pytest.raises(ValueError, match='ldka:dss-shrink'):
        parse_methods('ldka:everything')
    call, cfg = method_call('ldka:skd', None)
    assert call == 'ldka' and cfg.dss and cfg.pert and not cfg.mad and not cfg.gfr
    call, cfg = method_call('ldka:dss-shrink', LDKAConfig(lambda_dss=0.2))
    assert call == 'ldka' and cfg.dss_shrink_only and cfg.lambda_dss == 0.2 and not cfg.gfr
    assert method_call('ldka+gfr', None)[1].gfr
    # the variant's option is keyed only when set, so cached steps of LDKA stay valid
    assert 'dss_shrink_only' not in LDKAConfig().key()
    assert cfg.key()['dss_shrink_only'] is True
    call, cfg = method_call('ldka:bal-step', None)
    assert call == 'ldka' and cfg.balance_step_labels and cfg.dss and not cfg.gfr
    call, cfg = method_call('ldka:bal-split', None)
    assert call == 'ldka' and cfg.balance_split and not cfg.balance_step_labels
    assert 'balance_split' not in LDKAConfig().key() and cfg.key()['balance_split'] is True
    with pytest.raises(ValueError, match='balance_split and balance_step_labels'):
        LDKAConfig(balance_split=True, balance_step_labels=True)
    call, cfg = method_call('ldka:mib-ce', None)
    assert call == 'ldka' and not cfg.pseudo and not cfg.pml
    assert cfg.kd and cfg.dss and cfg.pert and cfg.mad and cfg.init == 'mib'
    assert method_call('ldka:mib-ce-imprint', None)[1].init == 'imprint'
    call, cfg = method_call('ldka:pl-unbiased', None)
    assert call == 'ldka' and cfg.pseudo and cfg.pml and cfg.pseudo_rest_unbiased
    assert cfg.dss and cfg.pert
    # the default since 2026-12-06: keyed, so that steps cached with the hard form miss
    default = method_call('ldka', None)[1]
    assert default == method_call('ldka:no-skd-unbiased', None)[1]
    assert default.pseudo_rest_unbiased and not default.dss and not default.pert
    assert LDKAConfig().key()['pseudo_rest_unbiased'] is True
    hard = method_call('ldka:pl-hard', None)[1]
    assert not hard.pseudo_rest_unbiased and 'pseudo_rest_unbiased' not in hard.key()
    assert hard.dss and hard.pert
    # variants measured before the change keep the switches they were measured with
    before = method_call('ldka:bal-split', None)[1]
    assert not before.pseudo_rest_unbiased and before.dss and before.pert
    skd_off = method_call('ldka:no-skd', None)[1]
    assert not skd_off.dss and not skd_off.pert and not skd_off.pseudo_rest_unbiased
    assert not cfg.pml_unbiased_margin
    assert method_call('ldka:pl-unbiased-um', None)[1].pml_unbiased_margin
    # the one-change variants of the 2026-12-06 default differ from it in that field only
    for name, field, value in (('ldka:dflt-imprint', 'init', 'imprint'),
                               ('ldka:dflt-bal-step', 'balance_step_labels', True),
                               ('ldka:dflt-no-mad', 'mad', False),
                               ('ldka:dflt-no-pml', 'pml', False),
                               ('ldka:dflt-kd5', 'lambda_kd', 5.0)):
        call, variant = method_call(name, None)
        assert call == 'ldka' and variant == dataclasses.replace(default, **{field: value})
    call, cfg = method_call('ldka:no-skd', None)
    assert not cfg.dss and not cfg.pert and cfg.pml and cfg.mad
    assert parse_methods('joint-offline,mib') == ['joint-offline', 'mib']


def test_step_label_balancing_moves_the_new_class_more(base, step_data):
    """
    Balancing over the step's labels (alone or in two levels) gives the new class MiB's share.

    With pseudo-labels every old class is present in a batch too; balancing over the
    pseudo-labelled target splits the CE evenly over all of them, so the new class's
    classifier row moves less in the same first iteration.
    """
    data = _few(step_data, 4)
    moved = {}
    for name, option in (('target', {}), ('step', {'balance_step_labels': True}),
                         ('split', {'balance_split': True})):
        cfg = tiny_config(iterations=1, lr=0.01, class_balance=1.0, freeze_bn=True)
        res = learn_step(base.model, data, NEW_CLASSES, 'ldka', cfg,
                         ldka=LDKAConfig(dss=False, pert=False, mad=False, kd=False,
                                         **option))
        # the new row starts as a copy of background's (MiB initialisation)
        start = base.model.classifier.weight[0].detach()
        moved[name] = float((res.model.classifier.weight[NEW_CLASSES[0]] - start)
                            .detach().norm())
    assert moved['step'] > 1.5 * moved['target'], moved
    # two-level balancing gives the new class the same share as step-label balancing
    assert moved['split'] > 1.5 * moved['target'], moved


_REPEAT_SCRIPT = """
import hashlib, sys
sys.path.insert(0, {test_dir!r})
import torch
torch.set_num_threads({threads})
from learning_fixtures import NEW_CLASSES, tiny_config, tiny_protocol, tiny_train
from ldka_ros.learning.checkpoint import load_checkpoint
from ldka_ros.learning.protocols import step_train_set
from ldka_ros.learning.steps import learn_step
from ldka_ros.learning.data import LabelMapped
model, _, _ = load_checkpoint({model!r})
full = step_train_set(tiny_train(), tiny_protocol(), 1)
data = LabelMapped(full.dataset, full.indices[:6], full.label_map, classes=full.classes)
res = learn_step(model, data, NEW_CLASSES, 'ldka', tiny_config(iterations=3, lr=0.002))
digest = hashlib.sha256()
for key, value in res.model.state_dict().items():
    digest.update(key.encode()); digest.update(value.numpy().tobytes())
print(digest.hexdigest())
"""


def test_same_command_same_weights_in_separate_processes(base, tmp_path):
    """A rerun is a new process: same seed and thread count must give the same bits."""
    from ldka_ros.learning.checkpoint import save_checkpoint

    model_path = tmp_path / 'base.pt'
    save_checkpoint(model_path, base.model, tiny_protocol().registry(16))
    script = _REPEAT_SCRIPT.format(test_dir=str(Path(__file__).parent),
                                   model=str(model_path), threads=2)
    digests = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                              text=True, timeout=300,
                              env={**os.environ, 'HF_HUB_OFFLINE': '1'})
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(proc.stdout.strip().splitlines()[-1])
    assert len(digests[0]) == 64 and digests[0] == digests[1]


_FORKED_LOADER_SCRIPT = """
import sys
sys.path.insert(0, {test_dir!r})
import cv2
import numpy as np
import torch
from learning_fixtures import tiny_config, tiny_train
from ldka_ros.learning.steps import _train_loader
# Evaluation resizes frames in the parent before the next step's loader forks workers:
# the parent's OpenCV pool is running when the children start.
cv2.setNumThreads(2)
big = np.random.default_rng(0).random((1500, 2000, 3), dtype=np.float32)
for _ in range(4):
    cv2.resize(big, (1000, 750))
loader = _train_loader(tiny_train(), tiny_config(iterations=4, num_workers=2), 0,
                       torch.device('cpu'))
print('batches', sum(1 for _ in loader), flush=True)
"""


def test_loader_workers_start_after_opencv_ran_in_the_parent(tmp_path):
    """A worker that resets OpenCV's thread pool after the fork hung the loader for ever."""
    require_camvid()
    script = _FORKED_LOADER_SCRIPT.format(test_dir=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=90, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    assert proc.returncode == 0 and 'batches 4' in proc.stdout, proc.stderr[-2000:]


def test_cuda_without_an_index_is_the_same_device_as_cuda_0():
    from ldka_ros.learning.steps import _same_device

    cpu, cuda0, cuda1 = torch.device('cpu'), torch.device('cuda:0'), torch.device('cuda:1')
    assert _same_device(cuda0, torch.device('cuda')) and _same_device(cpu, cpu)
    assert not _same_device(cpu, cuda0) and not _same_device(cuda0, cuda1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device: the bug was '
                    'a CPU model given to a CUDA feature pass (none here)')
def test_feature_pass_runs_on_the_requested_device_and_leaves_the_model_where_it_was():
    """bench-learn-speed gave a CPU model to a CUDA feature pass: 'found cuda:0 and cpu'."""
    from ldka_ros.learning.steps import collect_feature_bank

    require_camvid()
    model = tiny_base().model.cpu()
    data = step_train_set(tiny_train(), tiny_protocol(), 0)
    bank = collect_feature_bank(model, data, BASE_CLASSES, device='cuda')
    assert next(model.parameters()).device == torch.device('cpu') and bank is not None
