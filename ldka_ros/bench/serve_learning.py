# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Serving rate before, during and after a CPU learning step, for several job settings.

Why: on a robot's CPU the learning job and the segmentation node share the cores.
The job's torch threads, its niceness and the segmentation throttle decide whether
masks keep coming at camera rate while a step trains, and what that costs the step.
For each ``--config`` (side by side in one run), a fresh ``segmentation_node`` gets
frames at ``--rate`` Hz the whole time and the masks are counted in three windows:
``--before-seconds``, then ``--during-seconds`` of a learning step
(``bench.learn_load``: the job's priority and thread rules, LDKA iterations on
CamVid) from its first finished block, then ``--after-seconds`` once it is stopped.
The step's seconds per iteration come from the same run.

A config is ``NAME:threads=T,niceness=N,throttle_hz=R,node_threads=K``: the job's
torch threads (0 = half the cores), the niceness it adds, the segmentation node's
``max_rate_hz`` while training (0 = unchanged) and the node's ONNX Runtime threads.

Run: ``ldka bench-serve-learning --json out.json`` (defaults: the demo's base model
re-exported at 240x320, 30 Hz, the learner's old defaults against the chosen ones).
"""
from __future__ import annotations

import argparse
from pathlib import Path
import re
import subprocess
import sys
import tempfile
import threading
import time

from ldka_ros.bench import ros_graph
from ldka_ros.bench.cli_args import add_numbers
from ldka_ros.bench.record import command_line, start_record, write_record
import numpy as np

DEFAULT_CONFIGS = ('old_defaults:threads=0,niceness=0,throttle_hz=0,node_threads=0',
                   'nice19_1thread:threads=1,niceness=19,throttle_hz=0,node_threads=0',
                   'nice19_2threads:threads=2,niceness=19,throttle_hz=0,node_threads=0')
KEYS = ('threads', 'niceness', 'throttle_hz', 'node_threads')
_ITER = re.compile(r'round \d+ ldka: ([0-9.]+) s/iter')


def parse_config(text: str) -> dict:
    """Return ``{'name', 'threads', 'niceness', 'throttle_hz', 'node_threads'}``."""
    name, _, rest = text.partition(':')
    if not name or not rest:
        raise argparse.ArgumentTypeError(f'{text!r} is not NAME:key=value,...')
    config = {'name': name, 'threads': 0, 'niceness': 0, 'throttle_hz': 0.0,
              'node_threads': 0}
    for item in rest.split(','):
        key, _, value = item.partition('=')
        if key not in KEYS:
            raise argparse.ArgumentTypeError(f'{key!r} is not one of {", ".join(KEYS)}')
        config[key] = float(value) if key == 'throttle_hz' else int(value)
    return config


class _Load:
    """The learning-step process; collects its seconds per iteration as it prints them."""

    def __init__(self, config: dict, log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'ldka_ros.bench.learn_load', '--threads',
             str(config['threads']), '--niceness', str(config['niceness'])],
            stdout=subprocess.PIPE, stderr=open(log, 'a'), text=True)
        self.per_iter: list[float] = []
        self.first_block = threading.Event()
        self.header = ''
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            match = _ITER.search(line)
            if match:
                self.per_iter.append(float(match.group(1)))
                self.first_block.set()
            elif line.startswith('learn_load:'):
                self.header = line.strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _window(client, start_ns: int, end_ns: int, rate: float) -> dict:
    """Return masks, rate and longest gap of the masks that arrived in [start, end]."""
    with client.lock:
        times = [t for t, _ in client.arrivals if start_ns <= t <= end_ns]
    seconds = (end_ns - start_ns) / 1e9
    gaps = np.diff(times) / 1e6 if len(times) > 1 else np.zeros(0)
    return {'seconds': seconds, 'masks': len(times), 'rate_hz': len(times) / seconds,
            'input_rate_hz': rate, 'longest_gap_ms': float(gaps.max()) if gaps.size else None,
            'gaps_over_100ms': int(np.sum(gaps > 100.0))}


def _set_rate(client_node, target: str, rate: float) -> bool:
    """Set the node's max_rate_hz the way the learner does (``nodes.rate_throttle``)."""
    from ldka_ros.nodes.rate_throttle import RateThrottle

    throttle = RateThrottle(client_node, target)
    try:
        return not throttle.lower(rate, wait_s=5.0)
    finally:
        throttle.close()


class _Streamer:
    """Send frames at a fixed rate from a thread until stopped."""

    def __init__(self, client, msgs: list, rate: float) -> None:
        self.client, self.msgs, self.period = client, msgs, 1.0 / rate
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        key, next_t = 0, time.perf_counter()
        while not self.stop_event.is_set():
            key += 1
            self.client.publish(self.msgs[key % len(self.msgs)], key)
            next_t += self.period
            self.stop_event.wait(max(0.0, next_t - time.perf_counter()))

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5.0)


def run_config(args, registry: Path, msgs: list, work: Path, config: dict) -> dict:
    """One config: a fresh node, the three windows, the step's seconds per iteration."""
    node_args = argparse.Namespace(threads=config['node_threads'], node_log=args.node_log,
                                   start_timeout=args.start_timeout)
    out: dict = {'config': config}
    with ros_graph._node(node_args, registry, work, config['name'], {}) as (client, graph, res):
        ros_graph._wait_ready(node_args, client, graph, msgs[0])
        streamer = _Streamer(client, msgs, args.rate)
        try:
            time.sleep(args.settle_seconds)
            t0 = time.monotonic_ns()
            time.sleep(args.before_seconds)
            out['before'] = _window(client, t0, time.monotonic_ns(), args.rate)
            target = graph.nodes['segmentation'].spec.namespace + '/segmentation'
            if config['throttle_hz'] > 0:
                out['throttled'] = _set_rate(client.node, target, config['throttle_hz'])
            load = _Load(config, Path(args.node_log))
            try:
                if not load.first_block.wait(args.start_timeout * 3):
                    raise SystemExit(f'the learning load printed no block; see {args.node_log}')
                t1 = time.monotonic_ns()
                time.sleep(args.during_seconds)
                out['during'] = _window(client, t1, time.monotonic_ns(), args.rate)
            finally:
                load.stop()
            if config['throttle_hz'] > 0:
                _set_rate(client.node, target, 0.0)
            t2 = time.monotonic_ns()
            time.sleep(args.after_seconds)
            out['after'] = _window(client, t2, time.monotonic_ns(), args.rate)
        finally:
            streamer.stop()
    out['load'] = load.header
    out['seconds_per_iter'] = load.per_iter
    out['median_seconds_per_iter'] = (float(np.median(load.per_iter[1:] or load.per_iter))
                                      if load.per_iter else None)
    out['during_vs_before'] = out['during']['rate_hz'] / max(1e-9, out['before']['rate_hz'])
    out['stop_codes'] = res['stop_codes']
    return out


def format_table(results: dict) -> str:
    """Return one Markdown row per config."""
    lines = ['| config | job threads | niceness | throttle Hz | masks/s before | during | '
             'after | during / before | longest gap during ms | step s/iter |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for row in results['configs']:
        c = row['config']
        step = row['median_seconds_per_iter']
        gap = row['during']['longest_gap_ms']
        lines.append(
            f"| {c['name']} | {c['threads'] or 'half'} | {c['niceness']} | "
            f"{c['throttle_hz'] or '-'} | {row['before']['rate_hz']:.1f} | "
            f"{row['during']['rate_hz']:.1f} | {row['after']['rate_hz']:.1f} | "
            f"{row['during_vs_before']:.3f} | {'n/a' if gap is None else f'{gap:.0f}'} | "
            f"{'n/a' if step is None else f'{step:.3f}'} |")
    return '\n'.join(lines)


def main(argv: list[str] | None = None, prog: str = 'ldka bench-serve-learning') -> int:
    """Run every config side by side; print the table and write ``--json``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    p.add_argument('--registry', type=Path, help="model registry (default: the demo's "
                   'cached base model, built if needed)')
    p.add_argument('--frames', type=Path, help='folder of camera images (default: the demo '
                   "base model's rendered frames)")
    p.add_argument('--size', type=ros_graph._size, default=(240, 320),
                   help='input size HxW (the model is re-exported at it)')
    p.add_argument('--config', type=parse_config, action='append',
                   help='NAME:threads=T,niceness=N,throttle_hz=R,node_threads=K (repeatable; '
                   "default: the learner's old defaults and two candidates)")
    add_numbers(p, float, rate=30.0, before_seconds=15.0, during_seconds=45.0,
                after_seconds=15.0, settle_seconds=3.0, start_timeout=60.0)
    p.add_argument('--node-log', default='build/serve_learning_node.log')
    p.add_argument('--json', type=Path, help='write the figures as JSON here')
    args = p.parse_args(argv)
    configs = args.config or [parse_config(c) for c in DEFAULT_CONFIGS]
    registry, frames_dir = args.registry, args.frames
    if registry is None or frames_dir is None:
        default_registry, default_frames = ros_graph._default_inputs()
        registry, frames_dir = registry or default_registry, frames_dir or default_frames
    import rclpy
    import shutil

    header = start_record(command_line(prog, argv))
    work = Path(tempfile.mkdtemp(prefix='ldka-serve-learning-'))
    Path(args.node_log).parent.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    try:
        hw = tuple(args.size)
        sized = ros_graph.reexport(Path(registry), hw, work / 'registry')
        msgs = ros_graph._resized(ros_graph._load_frames(Path(frames_dir), 60), hw)
        results = {'size': f'{hw[0]}x{hw[1]}', 'rate_hz': args.rate, 'configs': []}
        for config in configs:
            print(f"config {config['name']} ...", flush=True)
            results['configs'].append(run_config(args, sized, msgs, work, config))
    finally:
        rclpy.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(results))
    if args.json:
        write_record(args.json, header, results)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
