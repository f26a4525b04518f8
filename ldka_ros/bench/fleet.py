# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka bench-fleet``: how long a new model version takes to reach robots over ROS.

Why: with ``model_source:=ros`` a robot serves a new version only after its files came
over DDS in chunks and were checked; an operator wants to know how long that takes for
the models this project makes, and what a second robot costs. One run:

1. makes the models to send: the demo's base model as its graph alone and as the whole
   version (graph + checkpoint), and a larger graph (``--large-backbone``, exported at
   the same input size; its weights are not trained: only its bytes and its graph
   matter here);
2. for 1 and then 2 receivers, starts a learner and the receivers (real processes,
   ``segmentation_node`` with ``model_source:=ros``, each with its own empty cache) and
   waits until every receiver serves the active version;
3. per round, publishes a fresh copy of a model (a new digest, so every byte travels),
   asks the learner's ``~/rollback`` to activate and announce it, and measures for each
   receiver the fetch time (the node's own ``last_fetch_s`` on /diagnostics) and the
   time from the announcement to the ``~/legend`` of the new version (its stamp is the
   moment the node switched); the difference is the load, warm-up and validation of the
   hot-swap.

Run: ``ldka bench-fleet --json docs/benchmarks/fleet.json``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
import shutil
import statistics
import sys
import tempfile
import threading
import time

from ldka_ros.bench.record import command_line, start_record, write_record

NS = f'/fleetbench{os.getpid()}'


def _note_graph(src: Path, dest: Path, note: str) -> Path:
    """Write a copy of an ONNX graph with one more metadata entry (so a new sha256)."""
    import onnx

    model = onnx.load(str(src))
    entry = model.metadata_props.add()
    entry.key, entry.value = 'bench_fleet_round', note
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest))
    return dest


def _export_large(backbone: str, classes: list[dict], input_hw, out: Path) -> Path:
    """Export an untrained SegModel with ``backbone`` and the base model's class slots."""
    import torch

    from ldka_ros.inference.export import export_onnx
    from ldka_ros.learning.model import ModelConfig, SegModel

    torch.manual_seed(0)
    model = SegModel(ModelConfig(backbone=backbone, num_slots=16, decoder_channels=128))
    model.set_active([int(c['id']) for c in classes])
    model.eval()
    export_onnx(model, out, input_hw=tuple(input_hw))
    return out


def make_models(base_registry: Path, work: Path, large_backbone: str) -> dict:
    """Return the models to send: name -> (files by kind, classes)."""
    from ldka_ros.registry import ModelRegistry

    base = ModelRegistry(base_registry)
    manifest = base.serving()[0]
    if manifest is None:
        raise SystemExit(f'{base_registry} has no version to serve')
    vdir = base.versions_dir / manifest.id
    files = {k: vdir / e.path for k, e in manifest.artefacts.items() if e.device is None}
    large = _export_large(large_backbone, manifest.classes, manifest.extra['input_hw'],
                          work / 'large' / 'model.onnx')
    return {'demo graph': ({'onnx': files['onnx']}, manifest.classes),
            f'{large_backbone} graph': ({'onnx': large}, manifest.classes),
            'demo (graph + checkpoint)': (files, manifest.classes)}


def publish_round(registry, files: dict, classes, work: Path, note: str) -> tuple[str, int]:
    """Publish a fresh copy of a model (new graph digest); return (id, bytes)."""
    fresh = dict(files)
    fresh['onnx'] = _note_graph(files['onnx'], work / note / Path(files['onnx']).name, note)
    manifest = registry.publish(fresh, classes)
    shutil.rmtree(work / note, ignore_errors=True)
    return manifest.id, sum(int(e.size) for e in manifest.artefacts.values())


class _Watcher:
    """The benchmark's rclpy node: each receiver's legends and fleet diagnostics."""

    def __init__(self, receivers: list[str]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        from ldka_ros.nodes.diagnostics import status_values
        from ldka_ros.nodes.qos import latched_qos
        from ldka_ros_interfaces.msg import ClassLegend
        from ldka_ros_interfaces.srv import Rollback

        self.node = rclpy.create_node('ldka_fleet_bench')
        self.lock = threading.Lock()
        self.legends: dict[str, list] = {r: [] for r in receivers}
        self.values: dict[str, dict] = {r: {} for r in receivers}
        self._status_values = status_values
        for robot in receivers:
            self.node.create_subscription(
                ClassLegend, f'{NS}/{robot}/legend',
                lambda msg, r=robot: self._on_legend(r, msg), latched_qos(depth=10))
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)
        self.rollback = self.node.create_client(Rollback, f'{NS}/learner/rollback')
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_legend(self, robot: str, msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.legends[robot].append((stamp, msg.model_version))

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            for robot in self.values:
                if status.name.startswith(f'{NS}/{robot}:'):
                    with self.lock:
                        self.values[robot] = self._status_values(status)

    def wait(self, predicate, timeout: float, what: str, graph) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return
            if graph.poll():
                raise SystemExit(f'a node died while waiting for {what}')
            time.sleep(0.05)
        raise SystemExit(f'timed out after {timeout:.0f} s waiting for {what}')

    def announce(self, version_id: str) -> float:
        """Ask the learner to activate and announce ``version_id``; return the time asked."""
        from ldka_ros_interfaces.srv import Rollback

        if not self.rollback.wait_for_service(timeout_sec=30.0):
            raise SystemExit("the learner's rollback service is not reachable")
        done = threading.Event()
        asked = time.time()
        future = self.rollback.call_async(Rollback.Request(version_id=version_id))
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(60.0) or not future.result().success:
            raise SystemExit(f'the learner did not activate {version_id}')
        return asked

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _specs(source: Path, work: Path, receivers: list[str], chunk: int) -> list:
    from ldka_ros.nodes.process_starter import NodeSpec

    specs = [NodeSpec(executable='learner_node', name='learner', namespace=NS,
                      parameters={'registry_path': str(source),
                                  'frame_store_path': str(work / 'frames')})]
    for robot in receivers:
        specs.append(NodeSpec(
            executable='segmentation_node', name=robot, namespace=NS,
            parameters={'registry_path': str(work / robot / 'cache'), 'model_source': 'ros',
                        'backend': 'onnxruntime', 'threads': 1, 'diagnostics_period_s': 0.2,
                        'model_version_topic': f'{NS}/learner/model_version',
                        'artefact_service': f'{NS}/learner/fetch_artefact',
                        'rollback_service': f'{NS}/learner/rollback',
                        'fetch_chunk_bytes': chunk}))
    return specs


def _round(watcher: _Watcher, graph, registry, receivers, model, work, note) -> list[dict]:
    """Send one fresh model to every receiver; return one row per receiver."""
    files, classes = model
    vid, size = publish_round(registry, files, classes, work, note)
    with watcher.lock:
        seen = {r: len(watcher.legends[r]) for r in receivers}
    asked = watcher.announce(vid)
    watcher.wait(lambda: all(len(watcher.legends[r]) > seen[r] for r in receivers)
                 and all(watcher.values[r].get('last_fetched_version') == vid
                         and watcher.values[r].get('serving_fleet_version') == vid
                         for r in receivers), 300.0, f'{vid} on every receiver', graph)
    rows = []
    for robot in receivers:
        with watcher.lock:
            switched = watcher.legends[robot][seen[robot]][0]
            values = dict(watcher.values[robot])
        fetch_s = float(values['last_fetch_s'])
        rows.append({'receiver': robot, 'version': vid, 'bytes': size, 'fetch_s': fetch_s,
                     'announce_to_switch_s': switched - asked,
                     'swap_s': switched - asked - fetch_s,
                     'frames_dropped': int(values.get('frames_dropped', 0))})
    return rows


def run_receivers(args, source: Path, models: dict, count: int, work: Path) -> list[dict]:
    """Start a learner and ``count`` receivers; send every model ``args.rounds`` times."""
    import rclpy

    from ldka_ros.nodes.process_starter import start_graph
    from ldka_ros.registry import ModelRegistry

    receivers = [f'robot{i + 1}' for i in range(count)]
    run_dir = work / f'n{count}'
    log_path = Path(args.node_log).with_suffix(f'.n{count}.log')
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with open(log_path, 'w') as log:
        graph = start_graph(_specs(source, run_dir, receivers, args.chunk_bytes), output=log)
        watcher = None
        try:
            rclpy.init()
            watcher = _Watcher(receivers)
            watcher.wait(lambda: all(watcher.values[r].get('serving_fleet_version')
                                     for r in receivers), args.start_timeout,
                         'every receiver to serve the active version', graph)
            registry = ModelRegistry(source)
            for name, model in models.items():
                for index in range(args.rounds):
                    for row in _round(watcher, graph, registry, receivers, model, work,
                                      f'n{count}-{name.split()[0]}-{index}'):
                        rows.append({'model': name, 'receivers': count, **row})
                        print(_row_text(rows[-1]), flush=True)
        finally:
            try:
                if watcher is not None:
                    watcher.close()
                rclpy.try_shutdown()
            finally:
                graph.stop()
    return rows


def _row_text(row: dict) -> str:
    return (f"{row['model']:<24} n={row['receivers']} {row['receiver']:<7} "
            f"{row['bytes'] / 1e6:6.1f} MB  fetch {row['fetch_s']:6.2f} s  swap "
            f"{row['swap_s']:5.2f} s  announce->serving {row['announce_to_switch_s']:6.2f} s")


def summarise(rows: list[dict]) -> list[dict]:
    """Return medians per (model, receivers): fetch, MB/s, swap, end to end."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row['model'], row['receivers']), []).append(row)
    out = []
    for (model, count), items in groups.items():
        fetch = statistics.median(r['fetch_s'] for r in items)
        size = items[0]['bytes']
        out.append({'model': model, 'receivers': count, 'mb': size / 1e6,
                    'samples': len(items), 'fetch_s_median': fetch,
                    'mb_per_s_per_receiver': size / 1e6 / fetch if fetch > 0 else None,
                    'swap_s_median': statistics.median(r['swap_s'] for r in items),
                    'announce_to_switch_s_median':
                        statistics.median(r['announce_to_switch_s'] for r in items),
                    'announce_to_switch_s_max': max(r['announce_to_switch_s'] for r in items),
                    'frames_dropped': sum(r['frames_dropped'] for r in items)})
    return out


def format_table(summary: list[dict]) -> str:
    lines = ['| model | MB | receivers | fetch s (median) | MB/s per receiver | swap s (median) '
             '| announce -> serving s (median / max) |',
             '|---|---|---|---|---|---|---|']
    for s in summary:
        lines.append(f"| {s['model']} | {s['mb']:.1f} | {s['receivers']} | "
                     f"{s['fetch_s_median']:.2f} | {s['mb_per_s_per_receiver']:.1f} | "
                     f"{s['swap_s_median']:.2f} | {s['announce_to_switch_s_median']:.2f} / "
                     f"{s['announce_to_switch_s_max']:.2f} |")
    return '\n'.join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog='ldka bench-fleet',
                                          description=__doc__.split('\n\n')[0])
    p.add_argument('--registry', type=Path, help='registry whose active version is the '
                   "demo model (default: the demo's cached base model, built if needed)")
    p.add_argument('--large-backbone', default='efficientnet_lite2',
                   help='backbone of the larger graph (timm name)')
    p.add_argument('--receivers', type=int, nargs='+', default=[1, 2])
    p.add_argument('--rounds', type=int, default=3, help='transfers per model and count')
    p.add_argument('--chunk-bytes', type=int, default=1 << 20)
    p.add_argument('--start-timeout', type=float, default=180.0)
    p.add_argument('--node-log', default='build/fleet_bench_nodes.log')
    p.add_argument('--json', type=Path, help='write the figures as JSON here')
    return p


def run(args) -> int:
    """Run the benchmark described by parsed ``args``; print the table, write the JSON."""
    if args.rounds < 1 or min(args.receivers) < 1:
        raise SystemExit('--rounds and --receivers must be positive')
    header = start_record(getattr(args, 'invocation', None)
                          or command_line('ldka bench-fleet', getattr(args, 'argv', None)))
    base = args.registry
    if base is None:
        from ldka_ros.app.demo.base_model import ensure_base_model

        base = ensure_base_model().registry_path
    work = Path(tempfile.mkdtemp(prefix='ldka-fleet-bench-'))
    try:
        models = make_models(Path(base), work, args.large_backbone)
        rows = []
        for count in args.receivers:
            source = work / f'source{count}' / 'registry'
            shutil.copytree(base, source)
            rows += run_receivers(args, source, models, count, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(rows)
    print(format_table(summary))
    if args.json:
        write_record(args.json, header, {'base_registry': str(base),
                                         'large_backbone': args.large_backbone,
                                         'chunk_bytes': args.chunk_bytes,
                                         'summary': summary, 'rows': rows})
        print(f'wrote {args.json}')
    return 0


def register(subparsers) -> None:
    """Add ``bench-fleet`` to the ``ldka`` parser."""
    p = subparsers.add_parser('bench-fleet', help='model versions to robots over ROS: '
                              'transfer and swap times', description=__doc__.split(chr(10) * 2)[0])
    build_parser(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
