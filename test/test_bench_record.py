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
    from ldka_ros.bench.ros_graph import format_table

    bare = {'pipeline': latency_stats([0.010, 0.012]),
            'backend_infer': latency_stats([0.008, 0.009])}
    ros = {'pingpong': {'latency': latency_stats([0.013, 0.015]), 'lost': 1},
           'soak': {'seconds': 10.0, 'rate_hz': 30.0, 'sent': 300, 'masks': 290,
                    'served_rate_hz': 29.0, 'gap': latency_stats([0.033, 0.050]),
                    'rss_mib': {'start': 300.0, 'end': 301.0, 'max': 302.0,
                                'growth_q2_to_q4': 0.5}}}
    table = format_table({'bare': bare, 'ros': ros, 'overhead_ratio_p50': 14.0 / 11.0})
    assert '| ROS: publish -> ~/mask received | 14.0 |' in table
    assert '| SegmentationPipeline.process (bare) | 11.0 |' in table
    assert 'ROS path / bare pipeline (p50): 1.273; lost in ping-pong: 1' in table
    assert 'longest gap 50 ms' in table and 'growth (2nd to 4th quarter) +0.5' in table
