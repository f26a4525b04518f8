# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Benchmark records: shared header, latency statistics, and the benchmarks' own tables."""
import json
import math
import os

from ldka_ros.bench.record import (command_line, latency_stats, machine_info, start_record,
                                   write_record)
import pytest


def test_latency_stats_hand_case():
    stats = latency_stats([0.004, 0.001, 0.003, 0.002], batch=2)
    assert stats['iters'] == 4
    assert stats['p50_ms'] == pytest.approx(2.5)
    assert stats['mean_ms'] == pytest.approx(2.5)
    assert (stats['min_ms'], stats['max_ms']) == (pytest.approx(1.0), pytest.approx(4.0))
    # numpy's linear interpolation: 1 + 0.9 * 3 = 3.7 ms
    assert stats['p90_ms'] == pytest.approx(3.7)
    # 4 calls x 2 frames in 10 ms
    assert stats['throughput_fps'] == pytest.approx(800.0)


def test_latency_stats_empty_is_reported_not_raised():
    stats = latency_stats([])
    assert stats['iters'] == 0 and math.isnan(stats['p50_ms'])
    assert stats['mean_ms'] is None and stats['throughput_fps'] is None


def test_command_line_quotes_what_the_shell_would_split():
    assert command_line('ldka', ['benchmark', '--methods', 'ldka+gfr', '--out', 'a b']) == (
        "ldka benchmark --methods ldka+gfr --out 'a b'")
    assert command_line('python -m x', []) == 'python -m x'


def test_write_record_merges_header_and_figures_atomically(tmp_path):
    header = start_record('ldka learn-speed --quick')
    assert header['machine']['cpu_count'] == os.cpu_count()
    assert len(header['date']) == len('2026-01-01T12:00')
    path = tmp_path / 'sub' / 'speed.json'
    doc = write_record(path, header, {'ratio': 1.4, 'command': 'ldka learn-speed --exact'})
    on_disk = json.loads(path.read_text())
    assert on_disk == doc
    assert on_disk['command'] == 'ldka learn-speed --exact'  # the figures' key wins
    assert on_disk['ratio'] == 1.4 and 'load_average_end' in on_disk
    assert on_disk['machine'] == header['machine']
    assert sorted(p.name for p in path.parent.iterdir()) == ['speed.json']


def test_machine_info_names_the_libraries():
    import torch

    info = machine_info()
    assert info['torch'] == torch.__version__
    assert info['cuda'] == torch.cuda.is_available()
    assert ('gpu' in info) == info['cuda']


def test_step_recipe_summary_counts_diverged_runs():
    from ldka_ros.bench.step_recipe import _summary, format_table

    rows = [{'seed': s, 'method': 'ldka', 'recipe': 'plain', 'seconds': 10.0 + s,
             'error': '', 'new_iou': iou, 'old_miou': 0.7} for s, iou in ((0, 0.2), (1, 0.4))]
    rows.append({'seed': 2, 'method': 'ldka', 'recipe': 'plain', 'seconds': 3.0,
                 'error': 'non-finite loss', 'new_iou': None, 'old_miou': None})
    rows.append({'seed': 0, 'method': 'mib', 'recipe': 'robot', 'seconds': 5.0,
                 'error': 'non-finite loss', 'new_iou': None, 'old_miou': None})
    summary = _summary(rows)
    ldka, mib = summary
    assert (ldka['runs'], ldka['diverged']) == (3, 1)
    assert ldka['new_iou'] == (pytest.approx(0.3), pytest.approx(0.1))
    assert ldka['seconds'][0] == pytest.approx(10.5)  # of the runs that finished
    assert mib['new_iou'] == (None, None) and mib['diverged'] == 1
    table = format_table({'summary': summary, 'base_model': {'old_miou_before': 0.75}})
    assert '| ldka | plain | 30.0 ± 10.0 | 70.0 ± 0.0 | 10.5 | 1/3 |' in table
    assert '| mib | robot | diverged | diverged | - | 1/1 |' in table
    assert 'base model on the same frames: 75.0%' in table


def test_ros_graph_bench_table_reads_the_record_it_writes():
    pytest.importorskip('rclpy', reason='bench.ros_graph needs rclpy')
    from argparse import Namespace

    from ldka_ros.bench import ros_graph

    # A 30 Hz soak of 3 s: one mask lost and one 250 ms stall with the sender still sending.
    ms = 1_000_000
    sent = {k: 1_000 * ms + k * 33 * ms for k in range(1, 91)}
    received = {k: t + 20 * ms for k, t in sent.items() if k != 60}
    for k in range(61, 91):
        received[k] += 217 * ms
    arrivals = sorted((t, k) for k, t in received.items())
    args = Namespace(soak_seconds=3.0, rate=30.0, stall_ms=100.0)
    soak = ros_graph._soak_figures(args, arrivals, sent, received,
                                   {'trace': None, 'canary': []})
    soak['rss_mib'] = ros_graph._rss_summary([(0, 300.0), (1, 301.0), (2, 301.5), (3, 302.0)])
    assert soak['delivered'] == 88 and soak['sent_after_first_mask'] == 89
    # frames kept coming but no node callback was traced in the gap: the node did not take them
    assert soak['gaps_over_stall_ms'] == 1 and soak['stall_causes'] == {'not_taken': 1}
    assert 280 < soak['stalls'][0]['gap_ms'] < 285 and soak['stalls'][0]['frames_sent'] == 9

    bare = {'pipeline': latency_stats([0.010, 0.012])}
    ros = {'latency': latency_stats([0.013, 0.015]), 'lost': 1,
           'stages': {'inference': {'p50_ms': 9.0, 'p99_ms': 11.0}}}
    row = {'bare': bare, 'ros': ros, 'added_p50_ms': 3.0, 'added_p99_ms': 3.0,
           'ratio_p50': 14.0 / 11.0}
    table = ros_graph.format_table({'sizes': {'240x320': row}, 'soak': soak,
                                    'soak_size': '240x320'})
    assert '| 240x320 | 11.0 / 12.0 | 14.0 / 15.0 | 3.0 / 3.0 | 1.27 | 5.0 / 4.0 | 1 |' in table
    assert '9.00 / 11.0' in table and table.count('n/a') == len(ros_graph.attribution.STAGES) - 1
    assert 'delivered 88/89 (98.88 %)' in table
    assert 'gaps > stall: 1' in table and 'growth (2nd to 4th quarter) +' in table
