# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""The rules bench-graph uses to say where a frame's time went and why masks stopped."""
from ldka_ros.bench import graph_attribution as ga

MS = 1_000_000


def _record(**ms):
    """Return a trace record whose timestamps are the given milliseconds."""
    fields = {'received_rt_ns': 0, 'callback_ns': 0, 'locked_ns': 0, 'worker_ns': 0,
              'converted_ns': 0, 'inferred_ns': 0, 'published_ns': 0}
    fields.update({k: int(v * MS) for k, v in ms.items()})
    return fields


def test_frame_stages_follow_the_timestamps_and_the_clock_offset():
    offset = 5_000 * MS  # the node's system clock runs 5 s ahead of its monotonic clock
    rec = _record(received_rt_ns=5_001.0, callback_ns=3.0, locked_ns=3.1, worker_ns=3.5,
                  converted_ns=3.6, inferred_ns=13.6, published_ns=14.0)
    stages = ga.frame_stages(rec, sent_ns=0, arrived_ns=int(15.0 * MS), rt_offset_ns=offset)
    expected = {'dds_in': 1.0, 'executor': 2.0, 'lock': 0.1, 'handoff': 0.4, 'convert': 0.1,
                'inference': 10.0, 'publish': 0.4, 'dds_out': 1.0}
    assert stages.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(stages[key] - value) < 1e-6, key
    no_info = ga.frame_stages(_record(callback_ns=3.0, locked_ns=3.1, worker_ns=3.5,
                                      converted_ns=3.6, inferred_ns=13.6, published_ns=14.0),
                              0, int(15.0 * MS), offset)
    assert 'executor' not in no_info and abs(no_info['dds_in'] - 3.0) < 1e-6


def test_each_cause_wins_only_with_its_evidence():
    gap = (0, 300 * MS)
    period = 33 * MS
    sends = [i * period for i in range(10)]
    callbacks = list(sends)
    slow = {'inference': 250.0, 'dds_in': 1.0}
    common = {'period_ns': period, 'ending': slow, 'sends': sends, 'callbacks': callbacks}
    assert ga.attribute_gap(gap, canary=[(10 * MS, 200 * MS)], gc_pauses=[],
                            **common)['cause'] == 'machine'
    assert ga.attribute_gap(gap, canary=[], gc_pauses=[(20 * MS, 180 * MS)],
                            **common)['cause'] == 'gc'
    assert ga.attribute_gap(gap, canary=[(10 * MS, 20 * MS)], gc_pauses=[(0, 5 * MS)],
                            **common)['cause'] == 'inference'
    quiet = dict(common, sends=[0, 290 * MS])
    assert ga.attribute_gap(gap, canary=[], gc_pauses=[], **quiet)['cause'] == 'sender'
    untaken = dict(common, callbacks=[0])
    result = ga.attribute_gap(gap, canary=[], gc_pauses=[], **untaken)
    assert result['cause'] == 'not_taken' and result['frames_sent'] == 10
    assert result['callbacks'] == 1


def test_gap_histogram_bins_every_gap_once():
    gaps = [10, 40, 41, 70, 99, 150, 300, 700, 1500]
    hist = ga.gap_histogram(gaps)
    assert sum(hist.values()) == len(gaps)
    assert hist['<=40'] == 2 and hist['40-70'] == 2 and hist['70-100'] == 1
    assert hist['100-200'] == 1 and hist['200-500'] == 1 and hist['>1000'] == 1
