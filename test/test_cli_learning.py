# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""The ``ldka`` learning commands end to end on real CamVid images (``--quick`` preset)."""
import csv
import json
import os
import subprocess
import sys

from ldka_ros.cli.main import main
from learning_fixtures import REPO_ROOT, require_camvid
import pytest

pytestmark = pytest.mark.slow


def test_benchmark_quick_writes_every_artefact(tmp_path, capsys):
    data = require_camvid()
    out = tmp_path / 'bench'
    rc = main(['benchmark', '--quick', '--protocol', 'camvid-6-5', '--methods',
               'finetune,ldka', '--seeds', '1', '--data', str(data), '--out', str(out),
               '--json', str(tmp_path / 'copy.json'), '--no-progress', '--device', 'cpu'])
    assert rc == 0
    printed = capsys.readouterr().out
    assert '| method | all | old | new |' in printed and '| ldka |' in printed
    doc = json.loads((out / 'results.json').read_text())
    copy = json.loads((tmp_path / 'copy.json').read_text())
    assert copy['rows'] == doc['rows'] and copy['preset'] == 'quick'
    # the committed copy says how, where and when it was measured
    assert copy['command'].startswith('ldka benchmark --quick --protocol camvid-6-5')
    assert copy['machine']['cpu_count'] == os.cpu_count() and copy['date'][:2] == '20'
    assert 'load_average_start' in copy and 'load_average_end' in copy
    rows = doc['rows']
    assert {(r['method'], r['step']) for r in rows} == {
        ('finetune', 0), ('finetune', 1), ('ldka', 0), ('ldka', 1)}
    # both methods start from the same cached base model
    base_rows = [r for r in rows if r['step'] == 0]
    assert base_rows[0]['miou_all'] == base_rows[1]['miou_all']
    assert len(list((out / 'cache').glob('base_seed0.pt'))) == 1
    for row in rows:
        assert 0.0 <= row['miou_old'] <= 1.0
        assert 'iou_sky' in row and 'old_px_low_margin' in row
    step1 = [r for r in rows if r['step'] == 1]
    assert all(r['miou_new'] is not None for r in step1)
    with open(out / 'results.csv', newline='') as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    for name in ('miou_curves.png', 'margin_histograms.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # a second run reuses every cached step (no training) and gives the same numbers
    rc = main(['benchmark', '--quick', '--protocol', 'camvid-6-5', '--methods',
               'finetune,ldka', '--seeds', '1', '--data', str(data), '--out', str(out),
               '--no-progress', '--device', 'cpu'])
    assert rc == 0
    again = json.loads((out / 'results.json').read_text())['rows']
    assert [r['miou_all'] for r in again] == [r['miou_all'] for r in rows]


def test_benchmark_selection_split_and_upper_bound(tmp_path, capsys):
    """Decide on the held-out drive, report on val: the same trained models, no retraining."""
    data = require_camvid()
    out = tmp_path / 'bench'
    common = ['benchmark', '--quick', '--protocol', 'camvid-6-5', '--methods',
              'mib,joint-offline', '--seeds', '1', '--data', str(data), '--out', str(out),
              '--no-progress', '--device', 'cpu']
    assert main([*common, '--eval-split', 'selection']) == 0
    printed = capsys.readouterr().out
    assert 'on CamVid selection' in printed and 'all / upper bound' in printed
    sel = json.loads((out / 'results.json').read_text())
    assert sel['eval_split'] == 'selection' and sel['selection_sequences'] == ['0001TP']
    assert sel['torch_threads'] >= 1  # float sums depend on it: a rerun must match it
    # the upper bound trains every class at once with the base + step budget
    assert sel['offline_iterations'] == sel['cfg_base']['iterations'] + \
        sel['cfg_step']['iterations']
    upper = [r for r in sel['rows'] if r['method'] == 'joint-offline']
    assert [r['step'] for r in upper] == [1] and upper[0]['miou_new'] is not None
    ratio = sel['summary']['mib']['ratio_to_upper_bound'][0]
    assert ratio == pytest.approx(sel['final']['mib']['0']['all']
                                  / sel['final']['joint-offline']['0']['all'])
    assert set(sel['final']['mib']['0']) == {'all', 'old', 'new'}
    assert main([*common, '--eval-split', 'val']) == 0
    val = json.loads((out / 'results.json').read_text())
    assert val['eval_split'] == 'val'
    # evaluated again, not trained again: the training record of every row is the same
    key = [(r['method'], r['step'], r['seconds']) for r in sel['rows']]
    assert [(r['method'], r['step'], r['seconds']) for r in val['rows']] == key
    assert [r['miou_all'] for r in val['rows']] != [r['miou_all'] for r in sel['rows']]


def test_train_base_learn_step_evaluate(tmp_path, capsys):
    data = require_camvid()
    base, step = tmp_path / 'base.pt', tmp_path / 'step.pt'
    common = ['--quick', '--data', str(data), '--no-progress', '--device', 'cpu']
    assert main(['train-base', '--out', str(base), '--iterations', '5', *common]) == 0
    assert main(['learn-step', '--checkpoint', str(base), '--out', str(step), '--method',
                 'mib', '--iterations', '3', *common]) == 0
    assert main(['evaluate', '--checkpoint', str(step), '--json', str(tmp_path / 'e.json'),
                 '--quick', '--data', str(data), '--device', 'cpu']) == 0
    out = capsys.readouterr().out
    assert 'camvid-6-5 after step 1' in out and 'bicyclist' in out
    doc = json.loads((tmp_path / 'e.json').read_text())
    assert doc['step'] == 1 and set(doc['per_class_iou']) == {str(i) for i in range(12)}
    from ldka_ros.learning.checkpoint import load_checkpoint

    model, classes, meta = load_checkpoint(step)
    assert model.active_classes() == list(range(12))
    assert meta['method'] == 'mib' and meta['feature_bank'] is not None
    assert classes.get(9).name == 'car'


@pytest.mark.parametrize('argv,message', [
    (['benchmark', '--methods', 'finetune,magic'], 'unknown method'),
    (['benchmark', '--protocol', 'voc-15-1'], 'unknown protocol'),
    (['learn-step', '--checkpoint', 'missing.pt', '--method', 'ldka'], 'does not exist'),
    (['learn-step', '--checkpoint', 'missing.pt', '--method', 'lwf'], 'known methods'),
])
def test_bad_names_exit_2_with_message(tmp_path, argv, message):
    data = require_camvid()
    argv = argv + ['--data', str(data), '--out', str(tmp_path / 'o'), '--quick',
                   '--no-progress']
    proc = subprocess.run([sys.executable, '-m', 'ldka_ros.cli.main', *argv],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr
