# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Benchmark of the ROS path: added latency over the bare pipeline, where it goes, and a soak.

Why: the segmentation node must not add much to what the inference pipeline costs by
itself, must not freeze, and must run for hours at camera rate without growing. For
each ``--sizes`` input (frames resized to it, the model re-exported at it), in one run:

1. ``SegmentationPipeline.process`` (resize, backend, resize back) timed in a fresh
   Python process with the node's backend and threads (the *bare* figure);
2. ``segmentation_node`` started as a real process (the project's process starter,
   loopback DDS) with its frame trace on (``trace_path``, see ``nodes.frame_trace``) and
   a canary process beside it (``bench.canary``); frames sent one at a time (publish,
   wait for the ``~/mask`` with that stamp): publish-to-mask latency, and per frame
   where the time went (``bench.graph_attribution``: DDS in, executor, lock, hand-off,
   conversion, inference, publish, DDS out).

Then the soak at ``--soak-size``: a fresh node, frames streamed at ``--rate`` Hz from
before it is ready for ``--soak-seconds`` after its first mask; delivered share, the
gap histogram, every gap over ``--stall-ms`` with its cause (machine / gc / sender /
lost / a stage), the first second reported apart, and the node's resident memory.

Run: ``ldka bench-graph --json out.json`` (defaults: the demo's cached base model and
its rendered frames, ONNX Runtime, sizes 144x192 240x320 480x640, 30 Hz, 300 s soak).
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ldka_ros.bench import graph_attribution as attribution
from ldka_ros.bench.cli_args import add_numbers
from ldka_ros.bench.record import command_line, latency_stats, start_record, write_record
from ldka_ros.cpu import resolve_threads
import numpy as np


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _load_frames(folder: Path, limit: int) -> list[np.ndarray]:
    import cv2

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in ('.png', '.jpg', '.jpeg'))
    if not paths:
        raise SystemExit(f'no .png/.jpg images in {folder}')
    frames = []
    for path in paths[:limit]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f'cannot read image {path}')
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    return frames


def _default_inputs() -> tuple[Path, Path]:
    """Return (registry, frames folder) of the demo's cached base model (built if needed)."""
    from ldka_ros.app.demo.base_model import ensure_base_model

    base = ensure_base_model()
    return base.registry_path, base.path / 'dataset' / 'images'


def reexport(registry_path: Path, input_hw: tuple[int, int], out: Path) -> Path:
    """Publish the active version re-exported at ``input_hw`` into a new registry ``out``."""
    from ldka_ros.inference.export import export_onnx
    from ldka_ros.learning.checkpoint import load_checkpoint
    from ldka_ros.registry import ModelRegistry

    source = ModelRegistry(registry_path)
    version = source.active_id()
    ckpt = source.artefact_path(version, 'checkpoint')
    model, classes, _ = load_checkpoint(ckpt)
    work = out.parent / f'{out.name}.work'
    work.mkdir(parents=True, exist_ok=True)
    export_onnx(model, work / 'model.onnx', input_hw)
    target = ModelRegistry(out, create=True)
    target.publish({'onnx': work / 'model.onnx', 'checkpoint': ckpt},
                   [c.to_dict() for c in classes], step=0, activate=True,
                   extra={'input_hw': list(input_hw), 'source': f'{registry_path}:{version}'})
    return out


def bare_pipeline(registry_path: Path, frames: list[np.ndarray], threads: int,
                  iters: int, warmup: int = 5) -> dict:
    """Time the bare pipeline on ``frames`` with the node's backend and threads."""
    from ldka_ros.inference.hotswap import backend_factory_from_registry
    from ldka_ros.inference.pipeline import SegmentationPipeline
    from ldka_ros.registry import ModelRegistry

    registry = ModelRegistry(registry_path)
    version = registry.active_id()
    backend = backend_factory_from_registry(
        registry, version, 'onnxruntime', intra_op_threads=resolve_threads(threads))()
    backend.load()
    pipeline = SegmentationPipeline(backend)
    try:
        for frame in frames[:warmup]:
            pipeline.process(frame)
        total, infer = [], []
        for i in range(iters):
            frame = frames[i % len(frames)]
            t0 = time.perf_counter()
            result = pipeline.process(frame)
            total.append(time.perf_counter() - t0)
            infer.append(result.infer_ms / 1000.0)
    finally:
        backend.release()
    return {'version': version, 'pipeline': latency_stats(total),
            'backend_infer': latency_stats(infer)}


_BARE_CHILD = (
    'import json, sys\n'
    'import numpy as np\n'
    'from pathlib import Path\n'
    'from ldka_ros.bench.ros_graph import bare_pipeline\n'
    'frames = list(np.load(sys.argv[2]))\n'
    'out = bare_pipeline(Path(sys.argv[1]), frames, int(sys.argv[3]), int(sys.argv[4]))\n'
    'print(json.dumps(out))\n')


def bare_pipeline_process(registry_path: Path, frames: list[np.ndarray], threads: int,
                          iters: int, work: Path) -> dict:
    """
    Time the bare pipeline in a fresh Python process, as the node runs in one.

    Why: timed inside the benchmark process, which has just re-exported the model with
    torch and runs rclpy, the same ONNX Runtime session took 17 ms p50 at 240x320 where
    the node's own inference stage took 13 ms; a separate process like the node's
    leaves only the ROS path as the difference.
    """
    stack = work / f'bare_frames_{frames[0].shape[0]}x{frames[0].shape[1]}.npy'
    np.save(stack, np.stack(frames))
    proc = subprocess.run([sys.executable, '-c', _BARE_CHILD, str(registry_path), str(stack),
                           str(threads), str(iters)], capture_output=True, text=True,
                          timeout=600)
    stack.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise SystemExit(f'bare pipeline process failed:\n{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _Client:
    """The benchmark's rclpy node: publishes frames, matches masks by stamp (monotonic ns)."""

    def __init__(self, image_topic: str, mask_topic: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from ldka_ros.nodes.qos import image_qos

        self.rclpy = rclpy
        # No parameter services or rosout: the client's executor then waits on the mask
        # subscription alone, so its own wake-up adds as little as it can to the figure.
        self.node = rclpy.create_node(f'ldka_graph_bench_{os.getpid()}',
                                      start_parameter_services=False, enable_rosout=False)
        self.pub = self.node.create_publisher(Image, image_topic, image_qos('sensor_data'))
        self.lock = threading.Lock()
        self.received: dict[int, int] = {}
        self.sent: dict[int, int] = {}
        self.arrivals: list[tuple[int, int]] = []
        self.event = threading.Event()
        self.node.create_subscription(Image, mask_topic, self._on_mask, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_mask(self, msg) -> None:
        now = time.monotonic_ns()
        key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.received[key] = now
            self.arrivals.append((now, key))
        self.event.set()

    def publish(self, msg, key_ns: int) -> int:
        """Send ``msg`` stamped ``key_ns``; return the send time (monotonic ns)."""
        sec, nsec = divmod(key_ns, 1_000_000_000)
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(sec), int(nsec)
        sent = time.monotonic_ns()
        self.pub.publish(msg)
        with self.lock:
            self.sent[key_ns] = sent
        return sent

    def wait_for(self, key_ns: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if key_ns in self.received:
                    return self.received[key_ns]
            self.event.wait(0.01)
            self.event.clear()
        return None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@contextmanager
def _canary(out: Path):
    """Run ``bench.canary`` beside the node; yield a function returning its stalls."""
    proc = subprocess.Popen([sys.executable, '-m', 'ldka_ros.bench.canary', '--out', str(out)])
    stalls: list = []

    def read() -> list:
        return stalls

    try:
        yield read
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10.0)
            stalls.extend(json.loads(out.read_text())['stalls'])
        except (subprocess.TimeoutExpired, OSError, ValueError, KeyError):
            proc.kill()


@contextmanager
def _node(args, registry_path: Path, work: Path, tag: str, node_params: dict):
    """
    Start ``segmentation_node`` (trace on) and a canary; yield (client, pid, result dict).

    On exit the node is stopped and the result gets ``trace`` (the node's frame trace),
    ``canary`` (stall spans) and ``stop_codes``.
    """
    import rclpy

    from ldka_ros.nodes.process_starter import NodeSpec, start_graph

    ns = f'/bench{os.getpid()}_{tag}'
    trace_path = work / f'trace_{tag}.json'
    params = {'registry_path': str(registry_path), 'backend': 'onnxruntime',
              'threads': int(args.threads), 'trace_path': str(trace_path)}
    params.update(node_params)
    spec = NodeSpec(executable='segmentation_node', name='segmentation', namespace=ns,
                    parameters=params, remaps={'image': f'{ns}/image'})
    log_path = Path(args.node_log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    with open(log_path, 'a') as log, _canary(work / f'canary_{tag}.json') as canary:
        graph = start_graph([spec], output=log)
        client = _Client(f'{ns}/image', f'{ns}/segmentation/mask')
        try:
            yield client, graph, result
        finally:
            client.close()
            result['stop_codes'] = graph.stop()
    result['canary'] = [tuple(s) for s in canary()]
    try:
        result['trace'] = json.loads(trace_path.read_text())
    except (OSError, ValueError):
        result['trace'] = None
    del rclpy


def _trace_records(trace: dict | None) -> dict[int, dict]:
    """Return the node's frame records by stamp."""
    if not trace:
        return {}
    fields = trace['fields']
    return {int(r[0]): dict(zip(fields, r)) for r in trace['frames']}


def _wait_ready(args, client: _Client, graph, msg) -> int:
    """Send a probe frame until a mask comes back; return the next free stamp key."""
    key = 1
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        client.publish(msg, key)
        if client.wait_for(key, 1.0) is not None:
            return key + 1
        key += 1
        if graph.poll():
            raise SystemExit(f'segmentation_node died; see {args.node_log}')
    raise SystemExit(f'no mask within {args.start_timeout} s; see {args.node_log}')


def ros_pingpong(args, registry_path: Path, msgs: list, work: Path, tag: str,
                 params: dict) -> dict:
    """One frame in flight at a time: publish-to-mask latency and its stages."""
    out: dict = {'node_params': params}
    with _node(args, registry_path, work, tag, params) as (client, graph, result):
        key = _wait_ready(args, client, graph, msgs[0])
        lat, lost, keys = [], 0, []
        for i in range(args.pingpong):
            key += 1
            sent = client.publish(msgs[i % len(msgs)], key)
            got = client.wait_for(key, 2.0)
            if got is None:
                lost += 1
            else:
                lat.append((got - sent) / 1e9)
                keys.append(key)
    records = _trace_records(result['trace'])
    offset = (result['trace'] or {}).get('realtime_minus_monotonic_ns', 0)
    stages = [attribution.frame_stages(records[k], client.sent[k], client.received[k], offset)
              for k in keys if k in records]
    out['latency'] = latency_stats(lat)
    out['lost'] = lost
    out['stages'] = attribution.stage_summary(stages)
    out['gc_pauses'] = _gc_summary(result['trace'])
    out['canary_stalls'] = _canary_summary(result['canary'])
    out['node_notes'] = (result['trace'] or {}).get('notes', {})
    out['stop_codes'] = result['stop_codes']
    return out


def _gc_summary(trace: dict | None) -> dict:
    """Return the node's GC pauses before its first frame (start-up) and while serving."""
    trace = trace or {}
    first = min((r[3] for r in trace.get('frames', [])), default=None)
    out = {}
    for name, keep in (('startup', lambda t: first is None or t < first),
                       ('serving', lambda t: first is not None and t >= first)):
        events = [e for e in trace.get('gc_pauses', []) if keep(e[0])]
        pauses = [e[1] / 1e6 for e in events]
        out[name] = {'count': len(pauses), 'max_ms': max(pauses) if pauses else 0.0,
                     'total_ms': float(sum(pauses)),
                     'by_generation': {str(g): sum(1 for e in events if e[2] == g)
                                       for g in (0, 1, 2)}}
    return out


def _canary_summary(stalls: list) -> dict:
    late = [s[1] / 1e6 for s in stalls]
    return {'stalls_over_5ms': len(late), 'over_20ms': sum(1 for v in late if v > 20),
            'over_50ms': sum(1 for v in late if v > 50), 'max_ms': max(late) if late else 0.0}


def _stream(args, client: _Client, msgs: list, pid: int) -> list:
    """Send frames at ``--rate`` until ``--soak-seconds`` after the first mask; sample RSS."""
    period = 1.0 / args.rate
    samples = [(0.0, _rss_mib(pid))]
    start = time.perf_counter()
    next_t, next_sample, key, first = start, start + args.rss_every, 0, None
    while True:
        now = time.perf_counter()
        if first is None and client.arrivals:
            first = now
        if now - start > args.start_timeout and first is None:
            raise SystemExit(f'no mask within {args.start_timeout} s; see {args.node_log}')
        if first is not None and now - first >= args.soak_seconds:
            break
        if now >= next_t:
            key += 1
            client.publish(msgs[key % len(msgs)], key)
            next_t += period
        if now >= next_sample:
            samples.append((now - start, _rss_mib(pid)))
            next_sample += args.rss_every
        time.sleep(max(0.0, min(next_t, next_sample) - time.perf_counter()))
    time.sleep(1.0)
    samples.append((time.perf_counter() - start, _rss_mib(pid)))
    return samples


def ros_soak(args, registry_path: Path, msgs: list, work: Path) -> dict:
    """Stream from before the node is ready; delivery, gaps and their causes after."""
    with _node(args, registry_path, work, 'soak', args.node_param) as (client, graph, result):
        samples = _stream(args, client, msgs, graph.nodes['segmentation'].pid)
        with client.lock:
            arrivals = sorted(client.arrivals)
            sent = dict(client.sent)
            received = dict(client.received)
    if not arrivals:
        raise SystemExit(f'no mask during the soak; see {args.node_log}')
    out = _soak_figures(args, arrivals, sent, received, result)
    out['rss_mib'] = _rss_summary(samples)
    out['rss_samples'] = [[round(t, 1), r] for t, r in samples]
    out['stop_codes'] = result['stop_codes']
    return out


def _soak_figures(args, arrivals, sent, received, result) -> dict:
    """Delivered share, gap histogram, start-up and stalls with causes."""
    first = arrivals[0][0]
    steady_from = first + 1_000_000_000
    after = [k for k, t in sent.items() if t >= first]
    delivered = sum(1 for k in after if k in received)
    times = [t for t, _ in arrivals]
    gaps = list(zip(times, times[1:]))
    steady = [(b - a) / 1e6 for a, b in gaps if b > steady_from]
    first_second = [(b - a) / 1e6 for a, b in gaps if b <= steady_from]
    out = {'seconds': args.soak_seconds, 'rate_hz': args.rate,
           'startup_ms': (first - min(sent.values())) / 1e6,
           'sent_after_first_mask': len(after), 'delivered': delivered,
           'delivered_fraction': delivered / max(1, len(after)),
           'masks': len(arrivals), 'gap': latency_stats([g / 1e3 for g in steady]),
           'gap_histogram': attribution.gap_histogram(steady),
           'first_second_gap_max_ms': max(first_second) if first_second else None,
           'gaps_over_stall_ms': sum(1 for g in steady if g > args.stall_ms)}
    out['stalls'] = _attribute(args, gaps, arrivals, sent, received, result)
    causes: dict[str, int] = {}
    for stall in out['stalls']:
        causes[stall['cause']] = causes.get(stall['cause'], 0) + 1
    out['stall_causes'] = causes
    out['gc_pauses'] = _gc_summary(result['trace'])
    out['canary_stalls'] = _canary_summary(result['canary'])
    out['node_notes'] = (result['trace'] or {}).get('notes', {})
    return out


def _attribute(args, gaps, arrivals, sent, received, result) -> list[dict]:
    """Return every gap over ``--stall-ms`` (first second included) with its cause."""
    trace = result['trace'] or {}
    records = _trace_records(trace)
    offset = trace.get('realtime_minus_monotonic_ns', 0)
    ending_key = dict(arrivals)
    sends = sorted(sent.values())
    callbacks = sorted(r['callback_ns'] for r in records.values())
    gc_spans = [(e[0], e[1]) for e in trace.get('gc_pauses', [])]
    first = arrivals[0][0]
    out = []
    for a, b in gaps:
        if (b - a) / 1e6 <= args.stall_ms:
            continue
        key = ending_key[b]
        ending = (attribution.frame_stages(records[key], sent[key], received[key], offset)
                  if key in records and key in sent else None)
        item = attribution.attribute_gap((a, b), int(1e9 / args.rate), ending, sends,
                                         callbacks, result['canary'], gc_spans)
        item['at_s'] = round((a - first) / 1e9, 3)
        out.append(item)
    return out


def _rss_summary(samples) -> dict:
    rss = [r for _, r in samples if r is not None]
    # growth: last quarter's mean minus the second quarter's (after warm-up settles)
    quarter = max(1, len(rss) // 4)
    growth = (float(np.mean(rss[-quarter:])) - float(np.mean(rss[quarter:2 * quarter]))
              if len(rss) >= 4 else None)
    return {'start': rss[0] if rss else None, 'end': rss[-1] if rss else None,
            'max': max(rss) if rss else None, 'growth_q2_to_q4': growth}


def _fmt(value, spec: str = '.1f') -> str:
    return 'n/a' if value is None else format(value, spec)


def _beyond(ros: dict, key: str) -> str:
    inference = ros.get('stages', {}).get('inference')
    return 'n/a' if inference is None else _fmt(ros['latency'][key] - inference[key])


def format_table(results: dict) -> str:
    """Return the figures as Markdown tables (sizes, stages, soak)."""
    # 'beyond inference': the ROS latency minus the node's own inference stage on the same
    # frames in the same minute; unlike the bare figure it does not move with the load
    # the machine had while the bare pipeline was timed.
    lines = ['| input | bare p50 / p99 ms | ROS p50 / p99 ms | added p50 / p99 ms | '
             'ROS / bare (p50) | beyond inference p50 / p99 ms | lost |',
             '|---|---|---|---|---|---|---|']
    variants = (('ros_baseline', '_baseline', ' baseline'), ('ros', '', ''))
    for size, row in results['sizes'].items():
        bare = row['bare']['pipeline']
        for name, suffix, label in variants:
            if name not in row:
                continue
            ros = row[name]['latency']
            lines.append(f"| {size}{label} | {_fmt(bare['p50_ms'])} / {_fmt(bare['p99_ms'])} | "
                         f"{_fmt(ros['p50_ms'])} / {_fmt(ros['p99_ms'])} | "
                         f"{_fmt(row['added_p50_ms' + suffix])} / "
                         f"{_fmt(row['added_p99_ms' + suffix])} | "
                         f"{_fmt(row['ratio_p50' + suffix], '.2f')} | "
                         f"{_beyond(row[name], 'p50_ms')} / {_beyond(row[name], 'p99_ms')} | "
                         f"{row[name]['lost']} |")
    lines += ['', '| input (p50 / p99 ms) | ' + ' | '.join(attribution.STAGES) + ' |',
              '|---' * (len(attribution.STAGES) + 1) + '|']
    for size, row in results['sizes'].items():
        for name, _, label in variants:
            if name not in row:
                continue
            st = row[name]['stages']
            cells = [f"{_fmt(st[s]['p50_ms'], '.2f')} / {_fmt(st[s]['p99_ms'], '.1f')}"
                     if s in st else 'n/a' for s in attribution.STAGES]
            lines.append(f'| {size}{label} | ' + ' | '.join(cells) + ' |')
    soak = results.get('soak')
    if soak:
        rss = soak['rss_mib']
        lines += ['', f"soak at {results['soak_size']}: {soak['seconds']:.0f} s after the first "
                  f"mask at {soak['rate_hz']:.0f} Hz; start-up {soak['startup_ms']:.0f} ms; "
                  f"delivered {soak['delivered']}/{soak['sent_after_first_mask']} "
                  f"({100 * soak['delivered_fraction']:.2f} %); longest gap after the first "
                  f"second {_fmt(soak['gap']['max_ms'], '.0f')} ms (first second: "
                  f"{_fmt(soak['first_second_gap_max_ms'], '.0f')} ms); gaps > stall: "
                  f"{soak['gaps_over_stall_ms']}; causes {soak['stall_causes']}",
                  f"gap histogram (ms): {soak['gap_histogram']}",
                  f"node GC: {soak['gc_pauses']}; canary: {soak['canary_stalls']}",
                  f"node RSS MiB: start {_fmt(rss['start'])}, end {_fmt(rss['end'])}, growth "
                  f"(2nd to 4th quarter) {_fmt(rss['growth_q2_to_q4'], '+.1f')}"]
    return '\n'.join(lines)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not HxW (e.g. 240x320)') from None
    if min(h, w) < 32:
        raise argparse.ArgumentTypeError(f'{text!r}: both sides must be >= 32')
    return h, w


def _node_param(text: str) -> tuple[str, object]:
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'{text!r} is not NAME=VALUE')
    name, value = text.split('=', 1)
    return name, json.loads(value) if value[:1] in '-0123456789tf[{"' else value


def parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    """Return the command line; sizes default to the three the pages report."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    p.add_argument('--registry', type=Path, help="model registry (default: the demo's "
                   'cached base model, built if needed)')
    p.add_argument('--frames', type=Path, help='folder of camera images (default: the '
                   "demo base model's rendered frames)")
    add_numbers(p, int, max_frames=60)
    p.add_argument('--threads', type=int, default=0, help='ONNX Runtime threads (0 = default)')
    p.add_argument('--pingpong', type=int, default=200, help='frames sent one at a time')
    add_numbers(p, float, rate=30.0, soak_seconds=300.0, rss_every=10.0, start_timeout=60.0,
                stall_ms=100.0)
    p.add_argument('--sizes', type=_size, nargs='+',
                   default=[(144, 192), (240, 320), (480, 640)],
                   help='input sizes HxW: frames are resized to each and the model '
                   're-exported at it')
    p.add_argument('--soak-size', type=_size, default=(240, 320),
                   help="the soak's input size HxW")
    p.add_argument('--no-soak', action='store_true', help='skip the soak')
    p.add_argument('--node-param', type=_node_param, action='append', default=[],
                   metavar='NAME=VALUE', help='a segmentation_node parameter (repeatable)')
    p.add_argument('--baseline-param', type=_node_param, action='append', default=[],
                   metavar='NAME=VALUE', help="also run each size's ping-pong with these "
                   'node parameters (the baseline), side by side (repeatable)')
    p.add_argument('--node-log', default='build/graph_bench_node.log')
    p.add_argument('--work-dir', type=Path, help='keep the re-exported models, node traces '
                   'and canary records here (default: a temporary folder, removed)')
    p.add_argument('--json', type=Path, help='write the figures as JSON here')
    args = p.parse_args(argv)
    args.argv, args.prog = argv, prog
    args.node_param = dict(args.node_param)
    args.baseline_param = dict(args.baseline_param)
    if args.rate <= 0 or args.soak_seconds <= 0 or args.pingpong < 1 or args.max_frames < 1:
        p.error('--rate, --soak-seconds, --pingpong and --max-frames must be positive')
    return args


def main(argv: list[str] | None = None, prog: str = 'ldka bench-graph') -> int:
    """Run every size, then the soak; print the tables and write ``--json``."""
    args = parse_args(argv, prog)
    registry, frames_dir = args.registry, args.frames
    if registry is None or frames_dir is None:
        default_registry, default_frames = _default_inputs()
        registry = registry or default_registry
        frames_dir = frames_dir or default_frames
    import shutil

    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return _run(args, Path(registry), Path(frames_dir), args.work_dir)
    tmp = Path(tempfile.mkdtemp(prefix='ldka-graph-bench-'))
    try:
        return _run(args, Path(registry), Path(frames_dir), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resized(frames: list[np.ndarray], hw: tuple[int, int]) -> list:
    """Return rgb8 Image messages of ``frames`` resized to ``hw``."""
    import cv2

    from ldka_ros.nodes.image_conversion import numpy_to_image

    out = []
    for frame in frames:
        if frame.shape[:2] != hw:
            frame = cv2.resize(frame, hw[::-1], interpolation=cv2.INTER_LINEAR)
        msg = numpy_to_image(np.ascontiguousarray(frame), 'rgb8')
        msg.header.frame_id = 'camera'
        out.append(msg)
    return out


def _one_size(args, registry: Path, frames: list, hw: tuple[int, int], work: Path) -> dict:
    """Bare pipeline and ROS ping-pong at one input size (model re-exported at it)."""
    from ldka_ros.nodes.image_conversion import image_to_numpy

    tag = f'{hw[0]}x{hw[1]}'
    sized = reexport(registry, hw, work / f'registry_{tag}')
    msgs = _resized(frames, hw)
    pixels = [np.array(image_to_numpy(m)) for m in msgs]
    bare = bare_pipeline_process(sized, pixels, args.threads, args.pingpong, work)
    print(f"{tag}: bare pipeline p50 {bare['pipeline']['p50_ms']:.1f} ms", flush=True)
    out = {'bare': bare, 'registry': str(sized)}
    variants = [('ros', args.node_param)]
    if args.baseline_param:
        variants.insert(0, ('ros_baseline', {**args.node_param, **args.baseline_param}))
    for name, params in variants:
        ros = ros_pingpong(args, sized, msgs, work, f'{tag}_{name}', params)
        print(f"{tag}: {name} p50 {ros['latency']['p50_ms']:.1f} ms", flush=True)
        b, r = bare['pipeline'], ros['latency']
        out[name] = ros
        suffix = '' if name == 'ros' else '_baseline'
        out['added_p50_ms' + suffix] = r['p50_ms'] - b['p50_ms']
        out['added_p99_ms' + suffix] = r['p99_ms'] - b['p99_ms']
        out['ratio_p50' + suffix] = r['p50_ms'] / b['p50_ms']
    return out


def _run(args, registry: Path, frames_dir: Path, work: Path) -> int:
    """Run the sizes and the soak on ``registry``'s active version; print and write."""
    import rclpy

    frames = _load_frames(frames_dir, args.max_frames)
    print(f'{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} from {frames_dir}; '
          f'registry {registry}', flush=True)
    header = start_record(command_line(args.prog, args.argv))
    results: dict = {'frames': {'count': len(frames), 'hw': list(frames[0].shape[:2]),
                                'folder': str(frames_dir)},
                     'registry': str(registry), 'threads': args.threads,
                     'node_params': args.node_param, 'sizes': {}}
    rclpy.init()
    try:
        for hw in args.sizes:
            results['sizes'][f'{hw[0]}x{hw[1]}'] = _one_size(args, registry, frames, hw, work)
        if not args.no_soak:
            hw = args.soak_size
            results['soak_size'] = f'{hw[0]}x{hw[1]}'
            sized = reexport(registry, hw, work / f'registry_soak_{hw[0]}x{hw[1]}')
            results['soak'] = ros_soak(args, sized, _resized(frames, hw), work)
    finally:
        rclpy.shutdown()
    print(format_table(results))
    if args.json:
        write_record(args.json, header, results)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
