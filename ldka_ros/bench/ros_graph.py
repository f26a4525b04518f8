# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Benchmark of the ROS path: end-to-end latency against the bare pipeline, and a soak.

Why: the segmentation node must not add much to what the inference pipeline costs by
itself, and it must run for hours at camera rate without growing. In one run this
script

1. times ``SegmentationPipeline.process`` (resize, backend, resize back) on the frames
   in this process, with the same backend and thread count the node gets, then releases
   that backend;
2. starts ``segmentation_node`` as a real process (the project's process starter) and
   sends the same frames one at a time (publish, wait for the ``~/mask`` with that
   stamp): publish-to-mask latency, including image conversion, DDS both ways and the
   overlay/margin publishing the node does for every frame;
3. streams frames at ``--rate`` Hz for ``--soak-seconds`` and samples the node's resident
   memory (``/proc/<pid>/status``), counting masks and the longest gap between them.

Run: ``ldka bench-graph --json out.json`` (defaults: the demo's cached
base model and its rendered frames, ONNX Runtime, 30 Hz, 300 s soak).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
import threading
import time

from ldka_ros.bench.cli_args import add_numbers
from ldka_ros.bench.record import command_line, latency_stats, start_record, write_record
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
                  warmup: int = 5) -> dict:
    """Time the bare pipeline on ``frames`` with the node's backend and threads."""
    from ldka_ros.inference.hotswap import backend_factory_from_registry
    from ldka_ros.inference.pipeline import SegmentationPipeline
    from ldka_ros.registry import ModelRegistry

    registry = ModelRegistry(registry_path)
    version = registry.active_id()
    backend = backend_factory_from_registry(
        registry, version, 'onnxruntime', intra_op_threads=threads or None)()
    backend.load()
    pipeline = SegmentationPipeline(backend)
    try:
        for frame in frames[:warmup]:
            pipeline.process(frame)
        total, infer = [], []
        for frame in frames:
            t0 = time.perf_counter()
            result = pipeline.process(frame)
            total.append(time.perf_counter() - t0)
            infer.append(result.infer_ms / 1000.0)
    finally:
        backend.release()
    return {'version': version, 'pipeline': latency_stats(total),
            'backend_infer': latency_stats(infer)}


class _Client:
    """The benchmark's rclpy node: publishes frames, matches masks by stamp."""

    def __init__(self, image_topic: str, mask_topic: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from ldka_ros.nodes.qos import image_qos

        self.rclpy = rclpy
        self.node = rclpy.create_node('ldka_graph_bench')
        self.pub = self.node.create_publisher(Image, image_topic, image_qos('sensor_data'))
        self.lock = threading.Lock()
        self.received: dict[int, float] = {}
        self.arrivals: list[float] = []
        self.event = threading.Event()
        self.node.create_subscription(Image, mask_topic, self._on_mask, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_mask(self, msg) -> None:
        now = time.perf_counter()
        key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.received[key] = now
            self.arrivals.append(now)
        self.event.set()

    def publish(self, msg, key_ns: int) -> float:
        sec, nsec = divmod(key_ns, 1_000_000_000)
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(sec), int(nsec)
        sent = time.perf_counter()
        self.pub.publish(msg)
        return sent

    def wait_for(self, key_ns: int, timeout: float) -> float | None:
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


def ros_path(args, registry_path: Path, frames: list[np.ndarray]) -> dict:
    """Start the segmentation node, then ping-pong latency and the soak."""
    import rclpy

    from ldka_ros.nodes.image_conversion import numpy_to_image
    from ldka_ros.nodes.process_starter import NodeSpec, start_graph

    ns = f'/bench{os.getpid()}'
    image_topic, mask_topic = f'{ns}/image', f'{ns}/segmentation/mask'
    spec = NodeSpec(executable='segmentation_node', name='segmentation', namespace=ns,
                    parameters={'registry_path': str(registry_path), 'backend': 'onnxruntime',
                                'threads': int(args.threads)},
                    remaps={'image': image_topic})
    log_path = Path(args.node_log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    msgs = [numpy_to_image(f, 'rgb8') for f in frames]
    for msg in msgs:
        msg.header.frame_id = 'camera'
    out: dict = {}
    with open(log_path, 'w') as log:
        graph = start_graph([spec], output=log)
        pid = graph.nodes['segmentation'].pid
        rclpy.init()
        client = _Client(image_topic, mask_topic)
        try:
            # ready = a mask comes back for a probe frame
            key = 1
            deadline = time.monotonic() + args.start_timeout
            while time.monotonic() < deadline:
                client.publish(msgs[0], key)
                if client.wait_for(key, 1.0) is not None:
                    break
                key += 1
                if graph.poll():
                    raise SystemExit(f'segmentation_node died; see {log_path}')
            else:
                raise SystemExit(f'no mask within {args.start_timeout} s; see {log_path}')
            # ping-pong latency, one frame in flight
            lat, lost = [], 0
            for i in range(args.pingpong):
                key += 1
                sent = client.publish(msgs[i % len(msgs)], key)
                got = client.wait_for(key, 2.0)
                if got is None:
                    lost += 1
                else:
                    lat.append(got - sent)
            out['pingpong'] = {'latency': latency_stats(lat), 'lost': lost}
            # soak at a fixed rate
            out['soak'] = _soak(args, client, msgs, pid, key)
        finally:
            client.close()
            rclpy.shutdown()
            out['stop_codes'] = graph.stop()
    return out


def _soak(args, client: _Client, msgs, pid: int, key: int) -> dict:
    period = 1.0 / args.rate
    with client.lock:
        client.arrivals.clear()
    samples = [(0.0, _rss_mib(pid))]
    start = time.perf_counter()
    next_t, next_sample, sent = start, start + args.rss_every, 0
    first_key = key + 1
    while True:
        now = time.perf_counter()
        if now - start >= args.soak_seconds:
            break
        if now >= next_t:
            key += 1
            client.publish(msgs[sent % len(msgs)], key)
            sent += 1
            next_t += period
        if now >= next_sample:
            samples.append((now - start, _rss_mib(pid)))
            next_sample += args.rss_every
        time.sleep(max(0.0, min(next_t, next_sample) - time.perf_counter()))
    time.sleep(1.0)
    samples.append((time.perf_counter() - start, _rss_mib(pid)))
    with client.lock:
        arrivals = list(client.arrivals)
        served = sum(1 for k in client.received if k >= first_key)
    gaps = np.diff(arrivals) if len(arrivals) > 1 else np.zeros(0)
    rss = [r for _, r in samples if r is not None]
    # growth: last quarter's mean minus the second quarter's (after warm-up settles)
    quarter = max(1, len(rss) // 4)
    growth = (float(np.mean(rss[-quarter:])) - float(np.mean(rss[quarter:2 * quarter]))
              if len(rss) >= 4 else None)
    return {'seconds': args.soak_seconds, 'rate_hz': args.rate, 'sent': sent,
            'masks': served, 'served_rate_hz': served / args.soak_seconds,
            'gap': latency_stats(gaps),
            'rss_mib': {'start': rss[0] if rss else None, 'end': rss[-1] if rss else None,
                        'max': max(rss) if rss else None,
                        'growth_q2_to_q4': growth},
            'rss_samples': [[round(t, 1), r] for t, r in samples]}


def format_table(results: dict) -> str:
    bare, ros = results['bare'], results['ros']
    pp = ros['pingpong']['latency']
    pl = bare['pipeline']
    bi = bare['backend_infer']
    soak = ros['soak']
    rss = soak['rss_mib']
    lines = [
        '| path | p50 ms | p90 ms | p99 ms |', '|---|---|---|---|',
        f"| backend.infer (bare) | {bi['p50_ms']:.1f} | {bi['p90_ms']:.1f} | "
        f"{bi['p99_ms']:.1f} |",
        f"| SegmentationPipeline.process (bare) | {pl['p50_ms']:.1f} | {pl['p90_ms']:.1f} | "
        f"{pl['p99_ms']:.1f} |",
        f"| ROS: publish -> ~/mask received | {pp['p50_ms']:.1f} | {pp['p90_ms']:.1f} | "
        f"{pp['p99_ms']:.1f} |",
        '',
        f"ROS path / bare pipeline (p50): {results['overhead_ratio_p50']:.3f}; "
        f"lost in ping-pong: {ros['pingpong']['lost']}",
        f"soak: {soak['seconds']:.0f} s at {soak['rate_hz']:.0f} Hz, sent {soak['sent']}, "
        f"masks {soak['masks']} ({soak['served_rate_hz']:.1f} Hz; the node keeps the "
        f"newest frame), longest gap {soak['gap']['max_ms'] or float('nan'):.0f} ms",
        f"node RSS MiB: start {rss['start']:.1f}, end {rss['end']:.1f}, max {rss['max']:.1f}, "
        'growth (2nd to 4th quarter) '
        + ('n/a' if rss['growth_q2_to_q4'] is None else f"{rss['growth_q2_to_q4']:+.1f}"),
    ]
    return '\n'.join(lines)


def main(argv: list[str] | None = None, prog: str = 'ldka bench-graph') -> int:
    p = argparse.ArgumentParser(prog=prog,
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--registry', type=Path, help="model registry (default: the demo's "
                   'cached base model, built if needed)')
    p.add_argument('--frames', type=Path, help='folder of camera images (default: the '
                   "demo base model's rendered frames)")
    add_numbers(p, int, max_frames=60)
    p.add_argument('--threads', type=int, default=0, help='ONNX Runtime threads (0 = default)')
    p.add_argument('--pingpong', type=int, default=200, help='frames sent one at a time')
    add_numbers(p, float, rate=30.0, soak_seconds=300.0, rss_every=10.0, start_timeout=60.0)
    p.add_argument('--node-log', default='build/graph_bench_node.log')
    p.add_argument('--input-hw', type=int, nargs=2, metavar=('H', 'W'),
                   help="re-export the registry's active version at this input size first "
                   '(into a temporary registry)')
    p.add_argument('--json', type=Path, help='write the figures as JSON here')
    args = p.parse_args(argv)
    args.argv, args.prog = argv, prog
    if args.rate <= 0 or args.soak_seconds <= 0 or args.pingpong < 1 or args.max_frames < 1:
        p.error('--rate, --soak-seconds, --pingpong and --max-frames must be positive')
    registry, frames_dir = args.registry, args.frames
    if registry is None or frames_dir is None:
        default_registry, default_frames = _default_inputs()
        registry = registry or default_registry
        frames_dir = frames_dir or default_frames
    tmp = None
    if args.input_hw:
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix='ldka-graph-bench-'))
        registry = reexport(Path(registry), tuple(args.input_hw), tmp / 'registry')
    try:
        return _run(args, Path(registry), Path(frames_dir))
    finally:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _run(args, registry: Path, frames_dir: Path) -> int:
    """Run the three phases on ``registry``'s active version; print and write results."""
    frames = _load_frames(frames_dir, args.max_frames)
    print(f'{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} from {frames_dir}; '
          f'registry {registry}', flush=True)
    header = start_record(command_line(args.prog, args.argv))
    bare = bare_pipeline(registry, frames, args.threads)
    print(f"bare pipeline p50 {bare['pipeline']['p50_ms']:.1f} ms", flush=True)
    ros = ros_path(args, registry, frames)
    results = {
        'frames': {'count': len(frames), 'hw': list(frames[0].shape[:2]),
                   'folder': str(frames_dir)},
        'registry': str(registry), 'input_hw': args.input_hw, 'threads': args.threads,
        'bare': bare, 'ros': ros,
        'overhead_ratio_p50': ros['pingpong']['latency']['p50_ms']
        / bare['pipeline']['p50_ms']}
    print(format_table(results))
    if args.json:
        write_record(args.json, header, results)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
