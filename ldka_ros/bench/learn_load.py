# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
A learning step's CPU load, started like the learner starts its job, for ``bench-serve-learning``.

Why not the whole job: the job's phases besides training (export, validation) are
short; what competes with the segmentation node for minutes is the training loop.
This process lowers its priority with the job's own ``lower_priority`` and sets the
job's torch thread count the same way (0 = half the cores), then runs LDKA steps on
CamVid (``bench.learning.measure_speed``: the same model, batch and crop as
``bench-learn-speed``) until it is stopped, printing each block's seconds per
iteration as ``round N ldka: X s/iter``.

Run: ``python -m ldka_ros.bench.learn_load --threads 1 --niceness 19 --rounds 1000``.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Lower the priority, set the threads, train until stopped (or ``--rounds`` blocks)."""
    parser = argparse.ArgumentParser(prog='python -m ldka_ros.bench.learn_load')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0 = half the '
                        'cores, as the job)')
    parser.add_argument('--niceness', type=int, default=0)
    parser.add_argument('--rounds', type=int, default=1000)
    parser.add_argument('--iterations', type=int, default=5, help='iterations per block')
    args = parser.parse_args(argv)
    from ldka_ros.app.job import lower_priority

    lower_priority(args.niceness)
    import torch

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) // 2))
    from ldka_ros.bench.learning import measure_speed
    from ldka_ros.learning.data import camvid_root

    print(f'learn_load: {torch.get_num_threads()} threads, niceness {os.nice(0)}', flush=True)
    measure_speed(camvid_root(None), methods=('ldka',), rounds=args.rounds,
                  iterations=args.iterations, echo=lambda text: print(text, flush=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
