# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The learning job lowers its own priority before it starts threads, and the spec checks it.

Why a test: a niceness set on a process from outside reaches only its main thread on
Linux; the job's torch/OpenMP threads then ran at full priority beside the
segmentation node. Here a real child process runs ``lower_priority`` and starts a
thread afterwards, and both report their niceness from ``/proc``.
"""
import os
import subprocess
import sys

from ldka_ros.app.job_spec import JobSpec
import pytest

CHILD = r"""
import os, threading
from ldka_ros.app.job import lower_priority

def nice_of(tid):
    with open(f'/proc/self/task/{tid}/stat') as handle:
        return int(handle.read().rsplit(')', 1)[1].split()[16])

lower_priority(int(os.environ['NICE_STEP']))
seen = []
worker = threading.Thread(target=lambda: seen.append(nice_of(threading.get_native_id())))
worker.start()
worker.join()
print(nice_of(threading.get_native_id()), seen[0])
"""


def test_the_job_and_every_later_thread_get_the_niceness():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    step = min(7, 19 - base)
    assert step > 0, 'this test needs a process that can still be niced'
    out = subprocess.run([sys.executable, '-c', CHILD], capture_output=True, text=True,
                         env=dict(os.environ, NICE_STEP=str(step)), timeout=120, check=True)
    main_nice, thread_nice = (int(v) for v in out.stdout.split())
    assert main_nice == base + step and thread_nice == base + step, out.stderr


@pytest.mark.parametrize('value', [-1, 20])
def test_a_spec_with_an_out_of_range_niceness_is_refused(value):
    spec = JobSpec(registry_path='/r', frame_store_path='/f', niceness=value)
    with pytest.raises(ValueError, match='niceness must be in 0..19'):
        spec.validate()
    JobSpec(registry_path='/r', frame_store_path='/f', niceness=19).validate()


def test_node_and_job_split_the_cores_by_default():
    from ldka_ros.cpu import half_the_cores, resolve_threads

    cores = len(os.sched_getaffinity(0))
    assert half_the_cores() == max(1, cores // 2)
    assert resolve_threads(0) == half_the_cores() and resolve_threads(3) == 3
    with pytest.raises(ValueError, match='>= 0'):
        resolve_threads(-1)
