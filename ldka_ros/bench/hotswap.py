# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Benchmark: does a model swap cost frames? ``ldka bench-hotswap``.

A camera thread emits real CamVid frames at a fixed rate into a depth-1 mailbox (the
newest frame replaces an unprocessed one, as a ROS subscription with queue depth 1
does); a segmentation thread takes the newest frame and runs ``HotSwapper.infer``. The
stream first runs alone (the baseline, so the swap's effect is separable from what the
machine can sustain anyway); then a learner thread publishes a new version to a real
registry mid-stream and the swap to it is requested, as the segmentation node does on a
``ModelVersion`` message.

Definitions (all times from one monotonic clock):

* frame *k* is captured at ``c_k = t0 + k T`` (``T`` = 1 / rate);
* frame *k* is **dropped** when no output for it exists by ``c_{k+1}``, the moment the
  next frame arrives: either it was never processed (replaced in the mailbox) or its
  output came later than one period after capture;
* **gap**: time between two consecutive outputs (target <= T + 10 %);
* **publish -> first output**: from the return of ``ModelRegistry.publish`` (the version
  is visible) to the first output computed by the new version (target < 3 s on CPU);
* **RSS**: process resident memory sampled every 20 ms (psutil): the median before the
  publish, the peak while old and new backend coexist, the median after the swap.
"""
from __future__ import annotations

import argparse
from copy import deepcopy
from pathlib import Path
import statistics
import sys
import tempfile
import threading
import time

from ldka_ros.bench.record import command_line, start_record, write_record
from ldka_ros.imaging.resize import resize_ids, resize_image
from ldka_ros.inference.hotswap import backend_factory_from_registry, HotSwapper
from ldka_ros.registry import ModelRegistry
import numpy as np


def load_frames(root: Path, count: int, hw: tuple[int, int], with_labels: bool = False):
    """Real CamVid val frames (RGB uint8) resized to ``hw``; labels in project ids if asked."""
    import cv2

    lut = np.full(256, 255, np.uint8)
    lut[:11] = np.arange(1, 12)
    out = []
    for path in sorted((root / 'val' / 'images').glob('*.jpg'))[:count]:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        image = resize_image(image, hw)
        if with_labels:
            label = cv2.imread(str(root / 'val' / 'labels' / f'{path.stem}.png'),
                               cv2.IMREAD_UNCHANGED)
            label = resize_ids(lut[label], hw)
            out.append((image, label))
        else:
            out.append(image)
    if not out:
        raise FileNotFoundError(f'no frames in {root / "val" / "images"}')
    return out


def build_versions(workdir: Path, hw: tuple[int, int], backbone: str):
    """Export a base model and a "learned one more class" model; return paths + legends."""
    import torch

    from ldka_ros.inference.export import export_onnx
    from ldka_ros.imaging.colors import slot_color
    from ldka_ros.learning.classes import CAMVID_CLASS_NAMES
    from ldka_ros.learning.model import ModelConfig, SegModel
    from ldka_ros.learning.pretrained import find_local_weights

    weights = find_local_weights(backbone)
    torch.manual_seed(0)
    base = SegModel(ModelConfig(backbone=backbone,
                                pretrained=str(weights) if weights else None)).eval()
    base.set_active(list(range(12)))
    step = deepcopy(base)
    step.set_active([12])  # a new class in a fresh slot, as a learning step adds it
    with torch.no_grad():
        step.classifier.weight[12].normal_(0, 0.05)
        step.classifier.bias[12].fill_(0.0)
    names = ('background',) + CAMVID_CLASS_NAMES + ('new_object',)
    legend = [{'id': i, 'name': n, 'color': list(slot_color(i))} for i, n in enumerate(names)]
    paths = []
    for name, model in (('base', base), ('step1', step)):
        path = workdir / 'export' / name / 'model.onnx'
        export_onnx(model, path, input_hw=hw)
        paths.append(path)
    return paths, legend[:12], legend


class RssSampler(threading.Thread):
    """Sample this process's RSS every ``period`` seconds until stopped."""

    def __init__(self, period: float = 0.02) -> None:
        super().__init__(daemon=True)
        import psutil

        self._proc = psutil.Process()
        self._period = period
        self._halt = threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), self._proc.memory_info().rss))
            self._halt.wait(self._period)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def window(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in self.samples if start <= t <= end]


class Stream:
    """Camera thread + segmentation thread around a depth-1 mailbox; see module docstring."""

    def __init__(self, swapper: HotSwapper, frames: list[np.ndarray], rate: float) -> None:
        self.swapper, self.frames, self.period = swapper, frames, 1.0 / rate
        self._cond = threading.Condition()
        self._mailbox: tuple[int, float] | None = None
        self._stop = threading.Event()
        self.captured: list[float] = []
        self.outputs: dict[int, tuple[float, str]] = {}
        self.replaced = 0
        self.errors: list[str] = []
        self.t0 = 0.0
        self._threads = [threading.Thread(target=self._camera, daemon=True),
                         threading.Thread(target=self._segment, daemon=True)]

    def start(self) -> None:
        self.t0 = time.monotonic() + 0.05
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _camera(self) -> None:
        k = 0
        while not self._stop.is_set():
            due = self.t0 + k * self.period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._cond:
                if self._mailbox is not None:
                    self.replaced += 1
                self._mailbox = (k, due)
                self.captured.append(due)
                self._cond.notify()
            k += 1

    def _segment(self) -> None:
        while True:
            with self._cond:
                while self._mailbox is None and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                k, _ = self._mailbox
                self._mailbox = None
            frame = self.frames[k % len(self.frames)]
            try:
                _, version = self.swapper.infer_versioned(frame[None])
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                self.errors.append(f'frame {k}: {exc!r}')
                continue
            self.outputs[k] = (time.monotonic(), version)

    def stats(self, start: float, end: float) -> dict:
        """Drop/gap/latency statistics of the frames captured in ``[start, end)``."""
        ks = [k for k, c in enumerate(self.captured) if start <= c < end]
        if len(ks) < 2:
            return {'frames': len(ks)}
        dropped = never = late = 0
        latencies = []
        for k in ks:
            out = self.outputs.get(k)
            if out is None:
                never += 1
                dropped += 1
                continue
            latencies.append(out[0] - self.captured[k])
            if out[0] > self.captured[k] + self.period:
                late += 1
                dropped += 1
        times = sorted(t for k, (t, _) in self.outputs.items() if start <= self.captured[k] < end)
        gaps = np.diff(times) if len(times) > 1 else np.array([0.0])
        lat = np.array(latencies) if latencies else np.array([np.nan])
        return {
            'frames': len(ks), 'outputs': len(times), 'dropped': dropped,
            'dropped_not_processed': never, 'dropped_late': late,
            'drop_rate': dropped / len(ks),
            'max_gap_ms': float(gaps.max() * 1000),
            'gap_p99_ms': float(np.percentile(gaps, 99) * 1000),
            'latency_median_ms': float(np.nanmedian(lat) * 1000),
            'latency_p95_ms': float(np.nanpercentile(lat, 95) * 1000),
            'latency_max_ms': float(np.nanmax(lat) * 1000),
            'output_rate_hz': (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1
            else 0.0,
        }


def run_benchmark(args: argparse.Namespace) -> dict:
    """Stream frames, publish and swap versions ``args.swaps`` times; return the figures."""
    hw = (int(args.hw[0]), int(args.hw[1]))
    from ldka_ros.learning.data import camvid_root

    root = camvid_root(args.camvid)
    frames = load_frames(root, args.frames, hw)
    validation = load_frames(root, args.validation_frames, hw, with_labels=True) \
        if args.validation_frames else None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='ldka_swap_bench_'))
    print(f'[swap_bench] exporting two {args.backbone} versions at {hw[0]}x{hw[1]} ...',
          file=sys.stderr)
    (base_onnx, step_onnx), base_legend, step_legend = build_versions(workdir, hw,
                                                                      args.backbone)
    registry = ModelRegistry(workdir / 'registry', create=True)
    v1 = registry.publish({'onnx': base_onnx}, base_legend, step=0, activate=True)
    kwargs = {'providers': 'cpu', 'intra_op_threads': args.threads}
    swapper = HotSwapper(backend_factory_from_registry(registry, v1.id, **kwargs)(), v1.id,
                         warmup_frames=args.warmup, background_nice=args.background_nice or None)
    swapper.infer(frames[0][None])
    sampler = RssSampler()
    sampler.start()
    stream = Stream(swapper, frames, args.rate)
    stream.start()
    events: dict = {}
    swapper.add_listener(
        lambda ev: events.setdefault((ev.stage, ev.version_id), time.monotonic()))
    time.sleep(args.baseline_s)
    t_first_publish = time.monotonic()
    swaps, windows = _swap_repeatedly(args, registry, swapper, v1, (base_onnx, base_legend),
                                      (step_onnx, step_legend), validation, kwargs)
    stream.stop()
    t_end = time.monotonic()
    sampler.stop()
    swapper.close()
    _swap_figures(swaps, windows, stream, events, sampler)
    mib = 1 / (1 << 20)
    steady_ranges = [(stream.t0, t_first_publish)]
    steady_ranges += [(end, nxt[0]) for (_, end), nxt in zip(windows, windows[1:] + [(t_end,)])]
    rss_before = sampler.window(stream.t0, t_first_publish)
    rss_after = sampler.window(windows[-1][1], t_end) if windows else []
    return {
        'config': {'rate_hz': args.rate, 'input_hw': list(hw), 'backbone': args.backbone,
                   'intra_op_threads': args.threads, 'background_nice': args.background_nice,
                   'pace': args.pace, 'warmup_frames': args.warmup,
                   'baseline_s': args.baseline_s, 'after_s': args.after_s,
                   'swaps': args.swaps, 'validation_frames': args.validation_frames,
                   'onnx_mib': base_onnx.stat().st_size * mib},
        'baseline': stream.stats(stream.t0, t_first_publish),
        'steady_all': _merge([stream.stats(a, b) for a, b in steady_ranges]),
        'swap_windows': _merge([s['window'] for s in swaps]),
        'swap_windows_paced': _merge([s['window'] for s in swaps if s['paced']]),
        'swap_windows_unpaced': _merge([s['window'] for s in swaps if not s['paced']]),
        'swaps': swaps,
        'errors': stream.errors[:20], 'error_count': len(stream.errors),
        'published_to_first_output_s_max': max(
            (s['published_to_first_output_s'] or float('inf') for s in swaps), default=None),
        'rss_before_mib': statistics.median(rss_before) * mib if rss_before else None,
        'rss_peak_swap_mib': max((s['rss_peak_mib'] or 0 for s in swaps), default=None),
        'rss_after_mib': statistics.median(rss_after) * mib if rss_after else None,
    }


def _swap_repeatedly(args, registry, swapper, first, base, step, validation,
                     kwargs) -> tuple[list[dict], list[tuple[float, float]]]:
    """Publish the step and the base version alternately and swap to each; return times."""
    (base_onnx, base_legend), (step_onnx, step_legend) = base, step
    swaps, windows = [], []
    parent = first
    for i in range(args.swaps):
        onnx_path, legend = (step_onnx, step_legend) if i % 2 == 0 else (base_onnx, base_legend)
        paced = args.pace == 'on' or (args.pace == 'alternate' and i % 2 == 0)
        swapper.pace_background = paced
        t_publish_start = time.monotonic()
        version = registry.publish({'onnx': onnx_path}, legend, parent=parent.id,
                                   step=i + 1, activate=True)
        t_published = time.monotonic()
        future = swapper.swap_to(backend_factory_from_registry(registry, version.id, **kwargs),
                                 version.id, validation_frames=validation, tolerance=1.0)
        report = future.result(timeout=300)
        t_done = time.monotonic()
        windows.append((t_publish_start, t_done + 1.0))
        swaps.append({'version': version.id, 'paced': paced, 'report': report.to_dict(),
                      'publish_s': t_published - t_publish_start,
                      't_publish_start': t_publish_start, 't_published': t_published,
                      't_done': t_done})
        parent = version
        time.sleep(args.after_s)
    return swaps, windows


def _swap_figures(swaps: list[dict], windows, stream, events: dict, sampler) -> None:
    """Add each swap's frame statistics, switch times and memory peak to its record."""
    mib = 1 / (1 << 20)
    for swap, (start, end) in zip(swaps, windows):
        first = min((t for t, ver in stream.outputs.values() if ver == swap['version']),
                    default=None)
        switched = events.get(('switched', swap['version']))
        swap['published_to_switch_s'] = switched - swap['t_published'] if switched else None
        swap['published_to_first_output_s'] = (first - swap['t_published']) if first else None
        swap['window'] = stream.stats(start, end)
        if switched:
            # Where in the swap the frames go: publishing, load/warmup/validate, the
            # switch and release, or the first second on the new backend.
            swap['phases'] = {
                'publish': stream.stats(start, swap['t_published']),
                'load_to_switch': stream.stats(swap['t_published'], switched),
                'switch_to_done': stream.stats(switched, swap['t_done']),
                'first_second_after': stream.stats(swap['t_done'], end),
            }
        rss = sampler.window(swap['t_publish_start'], swap['t_done'])
        swap['rss_peak_mib'] = max(rss) * mib if rss else None


def _merge(parts: list[dict]) -> dict:
    """Combine per-window statistics: counts add up, maxima stay maxima."""
    parts = [p for p in parts if p.get('frames', 0) >= 2]
    if not parts:
        return {'frames': 0}
    total = {key: sum(p[key] for p in parts)
             for key in ('frames', 'outputs', 'dropped', 'dropped_not_processed',
                         'dropped_late')}
    total['drop_rate'] = total['dropped'] / total['frames']
    for key in ('max_gap_ms', 'latency_max_ms', 'latency_p95_ms', 'gap_p99_ms'):
        total[key] = max(p[key] for p in parts)
    weights = [p['frames'] for p in parts]
    for key in ('latency_median_ms', 'output_rate_hz'):
        total[key] = float(np.average([p[key] for p in parts], weights=weights))
    total['windows'] = len(parts)
    return total


def print_table(result: dict) -> None:
    period_ms = 1000 / result['config']['rate_hz']
    rows = [('window', 'frames', 'dropped', 'late', 'not run', 'max gap ms', 'lat p50 ms',
             'lat p95 ms', 'out Hz', 'pub->1st out s')]

    def row(name, s, first=''):
        if s.get('frames', 0) < 2:
            return
        rows.append((name, s['frames'], s['dropped'], s['dropped_late'],
                     s['dropped_not_processed'], f'{s["max_gap_ms"]:.1f}',
                     f'{s["latency_median_ms"]:.1f}', f'{s["latency_p95_ms"]:.1f}',
                     f'{s["output_rate_hz"]:.1f}', first))

    row('baseline (no swap)', result['baseline'])
    row('all steady periods', result['steady_all'])
    for swap in result['swaps']:
        first = swap['published_to_first_output_s']
        row(f'swap to {swap["version"]} ({"paced" if swap["paced"] else "unpaced"})',
            swap['window'], f'{first:.2f}' if first else 'n/a')
    row('all swap windows', result['swap_windows'])
    if result['config']['pace'] == 'alternate':
        row('paced swap windows', result['swap_windows_paced'])
        row('unpaced swap windows', result['swap_windows_unpaced'])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for line in rows:
        print('  '.join(str(v).rjust(w) for v, w in zip(line, widths)))
    print(f'\nframe period {period_ms:.1f} ms (gap target <= {1.1 * period_ms:.1f} ms); '
          f'inference errors: {result["error_count"]}')
    for swap in result['swaps']:
        phases = swap.get('phases', {})
        print(f'{swap["version"]} drops by phase: ' + ', '.join(
            f'{name} {p.get("dropped", 0)}/{p.get("frames", 0)}' for name, p in phases.items()))
    for swap in result['swaps']:
        rep = swap['report']
        print(f'{swap["version"]}: ok={rep["ok"]} publish {swap["publish_s"]:.3f} s, load '
              f'{rep["load_s"]:.3f}, warmup {rep["warmup_s"]:.3f}, validate '
              f'{rep["validate_s"]:.3f}, release {rep["release_s"]:.3f} s')
    print(f'RSS: before {result["rss_before_mib"]:.0f} MiB, peak while old and new coexist '
          f'{result["rss_peak_swap_mib"]:.0f} MiB, after {result["rss_after_mib"]:.0f} MiB')


def main(argv: list[str] | None = None, prog: str = 'ldka bench-hotswap') -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json', help='write the results to this JSON file')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate in Hz')
    parser.add_argument('--hw', nargs=2, type=int, default=(240, 320), metavar=('H', 'W'))
    parser.add_argument('--backbone', default='efficientnet_lite0')
    parser.add_argument('--threads', type=int, default=1,
                        help='ONNX Runtime intra-op threads per session (default 1)')
    parser.add_argument('--background-nice', type=int, default=0,
                        help='HotSwapper background_nice (0 = off)')
    parser.add_argument('--baseline-s', type=float, default=10.0)
    parser.add_argument('--after-s', type=float, default=5.0,
                        help='seconds of streaming after each swap')
    parser.add_argument('--swaps', type=int, default=4, help='swaps, one after the other')
    parser.add_argument('--pace', choices=('on', 'off', 'alternate'), default='off',
                        help='HotSwapper.pace_background for each swap (alternate: on for '
                        'the 1st, 3rd, ... swap, off for the others: side by side in one run)')
    parser.add_argument('--frames', type=int, default=30, help='distinct CamVid frames')
    parser.add_argument('--validation-frames', type=int, default=0,
                        help='labelled frames the swap validates on (0 = smoke test only, '
                        'as the segmentation node does: the learning job validates)')
    parser.add_argument('--warmup', type=int, default=1,
                        help='warmup inferences of a new backend (the node uses 1)')
    parser.add_argument('--camvid', help='CamVid root (default: $LDKA_CAMVID or '
                        '../shared/data/camvid)')
    parser.add_argument('--workdir', help='where exports and the registry go (default: temp)')
    args = parser.parse_args(argv)
    header = start_record(command_line(prog, argv))
    result = run_benchmark(args)
    print_table(result)
    if args.json:
        write_record(args.json, header, result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
