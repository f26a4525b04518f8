# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
One demo run: start the graph, watch it, teach it the duck, report.

``run_demo`` does the whole loop that ``ldka demo`` promises:

1. the cached base model (``ldka_ros.app.demo.base_model``) is copied into a fresh registry;
2. the graph starts (``ldka_ros.app.demo.graph``: ``ros2 launch`` or the process starter,
   in an isolated ROS domain);
3. a client node (``ldka_ros.nodes.demo_client``) scores the segmentation masks against
   the simulator's exact masks (frames matched by header stamp), labels the duck on a few
   frames through ``~/label_object`` with boxes from the simulator (GrabCut turns them
   into masks, as for a person's click), runs ``~/learn`` and prints its feedback as a
   progress bar, waits until the segmentation node serves the new version (its legend
   changes) while the camera keeps streaming, and scores again;
4. the report (``ldka_ros.app.demo.report``) is printed and written with overlay pictures.

Every process is stopped on success, error, Ctrl-C or SIGTERM. Frames scored "after"
are only those stamped after the segmentation node announced the new legend, so no
mask of the old model is counted as the new one's. This module imports no ROS package
itself: every ROS call goes through the client.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
import os
from pathlib import Path
import shutil
import signal
import sys
import threading
import time
from typing import Callable

from ldka_ros.app.demo.base_model import BaseModelConfig, copy_registry, ensure_base_model
from ldka_ros.app.demo.graph import (DemoPaths, DemoTopics, Echo, isolated_ros_env,
                                     launch_available, launch_command, LaunchGraph,
                                     node_specs, StarterGraph, write_parameters)
from ldka_ros.app.demo.report import (DemoReport, format_progress, format_report, panel,
                                      save_png, StageTimer, with_legend, write_report)
from ldka_ros.app.demo.scenario import check_label_candidate, DemoSettings, IoUMeter, Scoring
from ldka_ros.bench.record import machine_info
from ldka_ros.errors import UserError
from ldka_ros.learning.metrics import mask_iou
from ldka_ros.nodes.demo_client import ClientSession, DemoClient
from ldka_ros.nodes.image_conversion import image_to_numpy
import numpy as np


@dataclass
class DemoOptions:
    """What ``ldka demo`` was asked for."""

    out: Path = Path('build/demo')
    settings: DemoSettings = field(default_factory=DemoSettings)
    base: BaseModelConfig = field(default_factory=BaseModelConfig)
    cache_root: Path | None = None
    rebuild_base: bool = False
    launcher: str = 'auto'  # auto | launch | process
    backend: str = 'auto'
    device: str = 'auto'
    progress: bool = True


class DemoError(UserError):
    """A stage of the demo failed; the message says which and why."""


class _Run:
    """State of one demo run, so that cleanup knows what to stop."""

    def __init__(self, options: DemoOptions, echo: Echo) -> None:
        self.options = options
        self.echo = echo
        self.paths = DemoPaths(Path(options.out).expanduser().absolute())
        self.timer = StageTimer()
        self.report = DemoReport(new_object=options.settings.new_object,
                                 settings=_settings_dict(options.settings))
        self.graph = None
        self.session: ClientSession | None = None
        self.node: DemoClient | None = None
        self.goal_handle = None
        self.log = None
        self.graph_cpu_s: float | None = None
        self.recorded: list = []  # (rgb, truth) of the frames scored before learning

    # -- checks used while waiting ---------------------------------------------------
    def check_graph(self) -> None:
        dead = self.graph.poll() if self.graph is not None else []
        if dead:
            raise DemoError('a node of the demo graph stopped: ' + '; '.join(dead)
                            + f' (full output in {self.paths.node_log})')

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.check_graph()
            if time.monotonic() > deadline:
                raise DemoError(f'timed out after {timeout:.0f} s waiting for {what} (node '
                                f'output in {self.paths.node_log})')
            time.sleep(0.05)

    # -- stages ----------------------------------------------------------------------
    def prepare(self) -> None:
        o = self.options
        with self.timer.run('base_model'):
            base = ensure_base_model(o.base, o.cache_root, o.rebuild_base, self.echo,
                                     progress=o.progress, device=o.device)
        self.base = base
        self.report.base_model = {
            'path': str(base.path), 'reused': base.reused, 'key': base.info.get('key'),
            'train_seconds': base.info['timings'].get('train_s'),
            'build_seconds': base.info['timings'].get('total_s'),
            'iterations': base.info['train'].get('iterations'),
            'heldout_miou': base.info['heldout'].get('miou'),
            'input_hw': list(o.base.input_hw)}
        self.paths.out.mkdir(parents=True, exist_ok=True)
        for path in (self.paths.frames, self.paths.work):
            if path.exists():
                shutil.rmtree(path)
        copy_registry(base, self.paths.registry)

    def start(self) -> None:
        o = self.options
        env = isolated_ros_env(self.echo)
        self.report.ros_domain_id = int(os.environ['ROS_DOMAIN_ID'])
        self.log = open(self.paths.node_log, 'w', buffering=1)
        use_launch = o.launcher == 'launch' or (o.launcher == 'auto' and launch_available())
        write_parameters(o.base, o.settings, self.paths, o.backend, o.device)
        with self.timer.run('start_graph'):
            if use_launch:
                command = launch_command(self.paths, o.backend)
                self.echo('starting the graph: ' + ' '.join(command) + ' (and the sim camera)')
                self.graph = LaunchGraph(command, env, self.log,
                                         node_specs(self.paths, ('sim_camera',)))
                self.report.launcher = 'ros2 launch + process starter (sim camera)'
            else:
                specs = node_specs(self.paths)
                self.echo('starting the graph with the process starter (no ros2 launch here): '
                          + ', '.join(s.label for s in specs)
                          + f'; node output in {self.paths.node_log}')
                self.graph = StarterGraph(specs, env, self.log)
                self.report.launcher = 'process_starter'
            self.session = ClientSession(DemoTopics())
            self.node = self.session.node
        node = self.node
        with self.timer.run('first_masks'):
            self.echo('waiting for the camera, the segmentation node and the learner ...')
            self.wait(lambda: node.masks_received >= 3 and node.current_version != '',
                      o.settings.startup_timeout_s, 'the first segmentation masks')
            self.wait(lambda: node.label_client.service_is_ready()
                      and node.learn_client.server_is_ready(), o.settings.startup_timeout_s,
                      'the learner node')
        self.report.versions['before'] = node.current_version
        deadline = time.monotonic() + 5.0  # diagnostics come once a second
        while not node.diagnostics_snapshot() and time.monotonic() < deadline:
            time.sleep(0.1)
        diag = node.diagnostics_snapshot()
        self.echo(f'segmentation serves {node.current_version} on '
                  f'{diag.get("backend", "?")} ({diag.get("device", "?")})')

    def _lut(self, version: str) -> np.ndarray:
        """Map the model's class ids of ``version`` to the scene's ids (by name)."""
        legend = self.node.legends[version]
        by_name = {name: cid for cid, name in self.node.scene_classes.items()}
        lut = np.full(256, 254, dtype=np.uint8)  # 254: an id the scene never uses
        lut[0] = 0
        for cid, name in zip(legend.ids, legend.names):
            if name in by_name:
                lut[int(cid)] = by_name[name]
        return lut

    def score(self, phase: str, version: str, min_stamp: int, record: bool = False) -> dict:
        s = self.options.settings
        node = self.node
        self.wait(lambda: bool(node.scene_classes), s.eval_timeout_s, 'ground-truth boxes')
        scene = dict(node.scene_classes)
        new_ids = [cid for cid, name in scene.items() if name == s.new_object]
        if not new_ids:
            raise DemoError(f'the sim camera shows no object named {s.new_object!r}; its '
                            f'classes are {sorted(scene.values())}')
        scoring = Scoring(IoUMeter({0: 'background', **scene}, new_ids), min_stamp,
                          s.eval_frames, self._lut(version), new_ids[0], s.overlay_frames,
                          record=record)
        self.echo(f'scoring {s.eval_frames} masks of {version} against the simulator '
                  f'({phase}) ...')
        node.start_scoring(scoring)
        try:
            self.wait(scoring.done.is_set, s.eval_timeout_s, f'{s.eval_frames} scored masks')
        finally:
            node.stop_scoring()
        result = scoring.meter.summary()
        result['version'] = version
        if record:
            self.recorded = list(scoring.frames)
        self.echo(f'  {phase}: old classes mIoU {_pct(result["old_miou"])}%, '
                  f'{s.new_object} IoU {_pct(result["new_iou"])}% over {result["frames"]} '
                  'frames')
        self._pictures(phase, version, scoring)
        return result

    def score_fixed(self, versions: list[str]) -> dict:
        """
        Score every version in ``versions`` on the frames recorded before learning.

        Why: the camera moves on while the learner trains, so the live "after" frames are
        other views than the "before" ones, and a class that is seen at a worse angle
        looks forgotten. Here each version's ONNX model from the registry runs through
        the segmentation node's own pipeline (ONNX Runtime, CPU) on the same frames, so
        the difference between versions is the step's alone.
        """
        from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
        from ldka_ros.inference.pipeline import SegmentationPipeline
        from ldka_ros.registry import ModelRegistry

        if not self.recorded:
            raise DemoError('no frames were recorded before learning; nothing to rescore')
        scene = dict(self.node.scene_classes)
        new_ids = [cid for cid, name in scene.items()
                   if name == self.options.settings.new_object]
        registry = ModelRegistry(self.paths.registry)
        self.echo(f'scoring {", ".join(versions)} again on the {len(self.recorded)} frames '
                  'scored before learning (same views) ...')
        out: dict = {'frames': len(self.recorded)}
        for version in versions:
            backend = OnnxRuntimeBackend(registry.artefact_path(version, 'onnx'),
                                         providers='cpu').load()
            try:
                pipeline, lut = SegmentationPipeline(backend), self._lut(version)
                meter = IoUMeter({0: 'background', **scene}, new_ids)
                for rgb, truth in self.recorded:
                    meter.update(lut[pipeline.process(rgb).class_ids], truth)
            finally:
                backend.release()
            out[version] = meter.summary()
        first, last = out[versions[0]]['per_class_iou'], out[versions[-1]]['per_class_iou']
        drops = {name: first[name] - last[name] for name in first
                 if first[name] is not None and last.get(name) is not None
                 and name != self.options.settings.new_object}
        if drops:
            worst = max(drops, key=drops.get)
            out['largest_old_drop'] = {'class': worst, 'drop': drops[worst]}
            self.echo(f'  same views: old classes mIoU {_pct(out[versions[0]]["old_miou"])}% '
                      f'-> {_pct(out[versions[-1]]["old_miou"])}%, largest old-class drop '
                      f'{100 * drops[worst]:.1f} points ({worst})')
        return out

    def _pictures(self, phase: str, version: str, scoring: Scoring) -> None:
        from ldka_ros.imaging.colors import colorize, overlay
        from ldka_ros.imaging.colors import slot_color

        legend = self.node.legends[version]
        by_name = {str(n): (int(round(c.r * 255)), int(round(c.g * 255)),
                            int(round(c.b * 255))) for n, c in zip(legend.names, legend.colors)}
        scene_palette = {0: (0, 0, 0)}
        for cid, name in self.node.scene_classes.items():
            scene_palette[cid] = by_name.get(name, slot_color(cid))
        rows = []
        for _, stamp, rgb, truth, pred in scoring.best:
            shown = self.node.overlay_for(stamp)
            if shown is None or shown.shape != rgb.shape:
                shown = overlay(rgb, pred, scene_palette)  # predictions are in scene ids
            rows.append([('camera', rgb),
                         ('ground truth (simulator)', colorize(truth, scene_palette)),
                         (f'segmentation {version} ({phase})', shown)])
        if not rows:
            self.echo(f'  no frame with the {self.options.settings.new_object} in view was '
                      f'scored {phase}; no picture')
            return
        legend_items = {cid: (name, scene_palette[cid])
                        for cid, name in sorted(self.node.scene_classes.items())}
        picture = with_legend(panel(rows), legend_items)
        path = save_png(self.paths.out / f'overlay_{phase}.png', picture)
        self.report.images[f'overlay_{phase}'] = str(path)

    def label(self) -> dict:
        s = self.options.settings
        node = self.node
        name = s.new_object
        self.wait(lambda: bool(node.scene_classes), s.label_timeout_s, 'ground-truth boxes')
        scene_id = next(c for c, n in node.scene_classes.items() if n == name)
        moved = node.set_camera_speed(s.label_camera_speed)
        self.echo(f'labelling "{name}" on {s.label_frames} frames with boxes from the '
                  f'simulator (GrabCut turns each box into a mask) ...')
        labels: list[dict] = []
        deadline = time.monotonic() + s.label_timeout_s
        last_stamp, last_time = 0, -1e9
        skipped: dict[str, int] = {}
        try:
            while len(labels) < s.label_frames:
                self.check_graph()
                if time.monotonic() > deadline:
                    raise DemoError(f'labelled only {len(labels)} of {s.label_frames} frames in '
                                    f'{s.label_timeout_s:.0f} s: the {name} was rarely in clear '
                                    f'view ({skipped})')
                newest = node.newest_frame()
                if newest is None or newest[0] == last_stamp or \
                        time.monotonic() - last_time < s.label_spacing_s:
                    time.sleep(0.05)
                    continue
                stamp, frame = newest
                last_stamp = stamp
                truth = np.asarray(image_to_numpy(frame.truth)).reshape(
                    frame.truth.height, frame.truth.width)
                entry = (frame.boxes.get('boxes') or {}).get(name)
                box = tuple(entry['box']) if entry else None
                cand = check_label_candidate(truth, box, scene_id, s.label_min_area)
                if not cand.ok:
                    skipped[cand.reason.split(' (')[0]] = skipped.get(
                        cand.reason.split(' (')[0], 0) + 1
                    continue
                labels.append(self._send_label(name, frame, cand.box, truth == scene_id))
                last_time = time.monotonic()
                item = labels[-1]
                self.echo(f'  label {len(labels)}/{s.label_frames}: box {list(item["box"])}, '
                          f'GrabCut mask IoU with the exact mask {_pct(item["mask_iou"])}% '
                          f'(class id {item["class_id"]})')
        finally:
            if moved:
                node.set_camera_speed(s.camera_speed)
        self.report.labels = labels
        return {'frames': len(labels), 'skipped_views': skipped}

    def _send_label(self, name: str, frame, box, truth_mask: np.ndarray) -> dict:
        x, y, w, h = box
        width, height = frame.image.width, frame.image.height
        pad = max(2, int(0.06 * max(w, h)))
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(width, x + w + pad), min(height, y + h + pad)
        reply = self.node.label(name, frame.image, (x0, y0, x1 - x0, y1 - y0), 60.0,
                                self.check_graph)
        if reply is None:
            raise DemoError('the learner did not answer label_object within 60 s')
        if not reply.accepted:
            raise DemoError(f'the learner refused the label: {reply.message}')
        stored = np.asarray(image_to_numpy(reply.mask)).reshape(
            reply.mask.height, reply.mask.width) != 0 if reply.mask.width else None
        quality = mask_iou(stored, truth_mask) if stored is not None else float('nan')
        return {'frame_id': reply.frame_id, 'class_id': int(reply.class_id),
                'box': [x0, y0, x1 - x0, y1 - y0], 'mask_iou': quality,
                'mask_pixels': int(stored.sum()) if stored is not None else None,
                'true_pixels': int(truth_mask.sum())}

    def learn(self) -> dict:
        s = self.options.settings
        node = self.node
        self.echo(f'learning "{s.new_object}" ({s.learn_iterations} iterations'
                  + (f', at most {s.learn_seconds:.0f} s' if s.learn_seconds else '')
                  + '); the camera and segmentation keep running')
        printer = _FeedbackPrinter(self.echo, sys.stdout.isatty() and self.options.progress)
        handle = node.learn([s.new_object], s.learn_iterations, s.learn_seconds, printer,
                            30.0, self.check_graph)
        if handle is None or not handle.accepted:
            raise DemoError('the learner did not accept the LearnClasses goal')
        self.goal_handle = handle
        response = node.learn_result(handle, s.learn_timeout_s, self.check_graph)
        printer.close()
        self.goal_handle = None
        if response is None:
            raise DemoError(f'learning did not finish within {s.learn_timeout_s:.0f} s')
        result = response.result
        if not result.success:
            raise DemoError(f'learning failed: {result.message}')
        ious = dict(zip(result.class_names, [float(v) for v in result.class_iou]))
        info = {'version_id': result.version_id, 'message': result.message,
                'held_out_iou': ious.get(s.new_object), 'class_iou': ious,
                'miou_old_vs_old_model': float(result.miou_old),
                'miou_new': float(result.miou_new), 'phases': printer.phase_seconds()}
        self.echo(f'learned: {result.message}')
        return info

    def wait_swap(self, version: str) -> float:
        s = self.options.settings
        node = self.node
        t0 = time.monotonic()
        self.echo(f'waiting for the segmentation node to serve {version} ...')
        self.wait(lambda: node.current_version == version, s.swap_timeout_s,
                  f'the segmentation node to switch to {version}')
        seconds = time.monotonic() - t0
        self.echo(f'  segmentation serves {version} ({seconds:.1f} s after the learner '
                  'finished)')
        return seconds

    def frame_counts(self) -> dict:
        node = self.node
        diag = node.diagnostics_snapshot()

        def num(key: str):
            try:
                return int(float(diag[key]))
            except (KeyError, ValueError):
                return None

        return {'camera_published': node.truth_received, 'received': num('frames_received'),
                'served': num('frames_processed'), 'skipped': num('frames_skipped'),
                'dropped': num('frames_dropped'), 'masks_seen_by_demo': node.masks_received,
                'backend': diag.get('backend'), 'device': diag.get('device'),
                'rate_hz': diag.get('rate_hz'), 'latency_p50_ms': diag.get('latency_p50_ms')}

    # -- cleanup ---------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.goal_handle is not None:
            self.echo('cancelling the learning step ...')
            try:
                self.node.cancel(self.goal_handle, 10.0)
            except Exception:  # noqa: B902 - the graph is stopped next anyway
                pass
        self.graph_cpu_s = _descendant_cpu_seconds()
        if self.graph is not None:
            self.echo('stopping the graph ...')
            try:
                self.graph.stop()
            finally:
                self.graph = None
        if self.session is not None:
            self.session.close()
            self.session = None
            self.node = None
        if self.log is not None:
            self.log.close()
            self.log = None


class _FeedbackPrinter:
    """Print LearnClasses feedback as a progress bar (one line per change without a tty)."""

    def __init__(self, echo: Echo, tty: bool) -> None:
        self.echo, self.tty = echo, tty
        self.last_line = ''
        self.last_print = 0.0
        self.last_phase = ''
        self.phase_start: dict[str, float] = {}
        self.phase_end: dict[str, float] = {}

    def __call__(self, msg) -> None:
        fb = msg.feedback
        now = time.monotonic()
        if fb.phase != self.last_phase:
            if self.last_phase:
                self.phase_end[self.last_phase] = now
            self.phase_start.setdefault(fb.phase, now)
        losses = dict(zip(fb.loss_names, [float(v) for v in fb.loss_values]))
        line = format_progress(fb.phase, fb.progress, fb.eta_seconds, losses)
        if self.tty:
            sys.stdout.write('\r' + line[:160].ljust(len(self.last_line)))
            sys.stdout.flush()
            self.last_line = line[:160]
        elif fb.phase != self.last_phase or now - self.last_print >= 10.0:
            self.echo('  ' + line)
            self.last_print = now
        self.last_phase = fb.phase

    def close(self) -> None:
        if self.last_phase:
            self.phase_end.setdefault(self.last_phase, time.monotonic())
        if self.tty and self.last_line:
            sys.stdout.write('\n')
            sys.stdout.flush()

    def phase_seconds(self) -> dict[str, float]:
        return {p: round(self.phase_end.get(p, time.monotonic()) - t, 2)
                for p, t in self.phase_start.items()}


def _pct(value) -> str:
    return 'n/a' if value is None or not math.isfinite(float(value)) else f'{100 * value:.1f}'


def _settings_dict(settings: DemoSettings) -> dict:
    from dataclasses import asdict

    return asdict(settings)


def run_demo(options: DemoOptions, echo: Echo = print) -> DemoReport:
    """
    Run the whole demo and return its report (also written to ``options.out``).

    Raises DemoError (a RuntimeError) naming the stage that failed; every process
    started is stopped before this returns or raises, also on KeyboardInterrupt.
    """
    run = _Run(options, echo)
    report = run.report
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, _frame) -> None:
        raise KeyboardInterrupt(f'signal {signal.Signals(signum).name}')

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    failure: BaseException | None = None
    try:
        run.prepare()
        run.start()
        node = run.node
        with run.timer.run('score_before'):
            report.before = run.score('before', node.current_version, 0, record=True)
        with run.timer.run('label'):
            report.learn['labelling'] = run.label()
        with run.timer.run('learn'):
            report.learn.update(run.learn())
        version = report.learn['version_id']
        with run.timer.run('swap'):
            report.versions['swap_seconds'] = run.wait_swap(version)
        report.versions['after'] = version
        with run.timer.run('score_after'):
            report.after = run.score('after', version, node.legend_stamp.get(version, 0))
        with run.timer.run('score_same_views'):
            report.same_views = run.score_fixed([report.versions['before'], version])
        report.frames = run.frame_counts()
        report.success = True
        report.message = 'ok'
    except KeyboardInterrupt as exc:
        failure = exc
        report.message = 'interrupted'
        echo('interrupted: stopping every process ...')
    except BaseException as exc:
        failure = exc
        report.message = str(exc)
    finally:
        try:
            if run.node is not None and not report.frames:
                report.frames = run.frame_counts()
        except Exception:  # noqa: B902 - counts are optional in a failed run
            pass
        with run.timer.run('shutdown'):
            run.cleanup()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        _write_report(run, echo)
    if failure is not None:
        if isinstance(failure, (KeyboardInterrupt, DemoError)):
            raise failure
        raise DemoError(f'{type(failure).__name__}: {failure}') from failure
    echo('')
    echo(format_report(report))
    return report


def _write_report(run: _Run, echo: Echo) -> None:
    """Complete the report with stage times and machine figures; write it beside the run."""
    report = run.report
    report.stages = run.timer.to_dict()
    report.total_s = round(run.timer.total(), 2)
    report.machine = machine_info()
    # CPU seconds, which unlike wall time hardly depend on other jobs on the machine.
    report.machine['demo_process_cpu_s'] = round(time.process_time(), 1)
    report.machine['graph_cpu_s'] = run.graph_cpu_s
    try:
        json_path, _ = write_report(run.paths.out, report)
        report.images['report_json'] = str(json_path)
    except OSError as exc:
        echo(f'could not write the report to {run.paths.out}: {exc}')


def _descendant_cpu_seconds() -> float | None:
    """Return CPU seconds used by this process's descendants (nodes and their jobs)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dev dependency
        return None
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return round(total, 1)
