"""
The demo's report: stage timings, IoU before/after, frame counts, and pictures.

Why a separate module: what the demo prints and saves must read the same whether the
graph ran through ``ros2 launch`` or the process starter, and the test checks the
numbers in this structure rather than parsing terminal output. Everything here is plain
data and numpy/OpenCV; no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
import os
from pathlib import Path
import time
from typing import Iterable, Mapping, Sequence

from ldka_ros.fsio import atomic_write_bytes, atomic_write_json, atomic_write_text
from ldka_ros.imaging.resize import resize_ids
import numpy as np

REPORT_FORMAT = 'ldka_ros.demo_report/1'


@dataclass
class StageTimer:
    """Wall-clock seconds of each named stage, in the order they ran."""

    stages: list[tuple[str, float]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def run(self, name: str):
        """Return a context manager that times one stage (recorded even if it fails)."""
        timer = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.monotonic()
                return self

            def __exit__(self, *exc) -> None:
                timer.stages.append((name, time.monotonic() - self.t0))

        return _Stage()

    def add(self, name: str, seconds: float) -> None:
        """Record a stage measured elsewhere."""
        self.stages.append((name, float(seconds)))

    def total(self) -> float:
        """Return seconds since the timer was created."""
        return time.monotonic() - self.started

    def to_dict(self) -> dict[str, float]:
        """Return stage -> seconds (repeated names are summed)."""
        out: dict[str, float] = {}
        for name, seconds in self.stages:
            out[name] = round(out.get(name, 0.0) + seconds, 2)
        return out


@dataclass
class DemoReport:
    """Everything a demo run measured; ``to_dict`` is what report.json holds."""

    new_object: str
    before: dict | None = None
    after: dict | None = None
    #: Both versions scored on the "before" frames (``_Run.score_fixed``): old-class
    #: change without the change of view.
    same_views: dict = field(default_factory=dict)
    learn: dict = field(default_factory=dict)
    frames: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    total_s: float = 0.0
    base_model: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    labels: list = field(default_factory=list)
    images: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    launcher: str = ''
    ros_domain_id: int | None = None
    success: bool = False
    message: str = ''
    machine: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return JSON-ready data (NaN and inf become None)."""
        data = {'format': REPORT_FORMAT, **{k: getattr(self, k)
                                            for k in self.__dataclass_fields__}}
        return _finite(data)


def _finite(value):
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _pct(value) -> str:
    return 'n/a' if value is None or not math.isfinite(float(value)) else f'{100 * value:.1f}'


def _delta(before, after) -> str:
    if before is None or after is None:
        return ''
    return f'{100 * (after - before):+.1f}'


def format_report(report: DemoReport) -> str:
    """Return the report as the text the demo prints at the end."""
    r = report
    lines = [f'ldka_ros demo: teaching the robot "{r.new_object}"'
             + ('' if r.success else f' (INCOMPLETE: {r.message})'), '']
    b, a = r.before or {}, r.after or {}
    lines.append(f'{"IoU (%)":28s} {"before":>8s} {"after":>8s} {"change":>8s}')
    rows = [('old classes (mIoU)', b.get('old_miou'), a.get('old_miou')),
            (f'new class "{r.new_object}"', b.get('new_iou'), a.get('new_iou'))]
    names = list((a.get('per_class_iou') or b.get('per_class_iou') or {}).keys())
    for name in names:
        rows.append((f'  {name}', (b.get('per_class_iou') or {}).get(name),
                     (a.get('per_class_iou') or {}).get(name)))
    for label, before, after in rows:
        lines.append(f'{label:28s} {_pct(before):>8s} {_pct(after):>8s} '
                     f'{_delta(before, after):>8s}')
    lines.append(f'{"frames scored":28s} {b.get("frames", 0):>8} {a.get("frames", 0):>8}')
    lines.append('(live views: the camera moved between before and after)')
    same = r.same_views or {}
    versions = [v for v in (r.versions.get('before'), r.versions.get('after')) if v in same]
    if len(versions) == 2:
        first, last = same[versions[0]], same[versions[1]]
        lines.append(f'same {same.get("frames", 0)} views, {versions[0]} -> {versions[1]}: old '
                     f'classes {_pct(first.get("old_miou"))} -> {_pct(last.get("old_miou"))}'
                     f' ({_delta(first.get("old_miou"), last.get("old_miou"))})')
        worst = same.get('largest_old_drop')
        if worst:
            lines.append(f'  largest old-class drop on the same views: '
                         f'{100 * worst["drop"]:.1f} points ({worst["class"]})')
    lines.append('')
    if r.learn:
        lines.append(f'learning: {r.learn.get("message", "")}')
        if r.learn.get('held_out_iou') is not None:
            lines.append('  held-out IoU of the labelled frames (the learner check): '
                         f'{_pct(r.learn.get("held_out_iou"))}')
    if r.versions:
        lines.append(f'model versions: {r.versions.get("before", "?")} -> '
                     f'{r.versions.get("after", "?")}'
                     + (f' (served {r.versions.get("swap_seconds", 0):.1f} s after the '
                        'learner published it)' if r.versions.get('swap_seconds') is not None
                        else ''))
    f = r.frames
    if f:
        lines.append(f'frames: camera published ~{f.get("camera_published", "?")}, segmentation '
                     f'received {f.get("received", "?")}, served {f.get("served", "?")}, '
                     f'skipped (newer frame arrived) {f.get("skipped", "?")}, dropped '
                     f'(errors) {f.get("dropped", "?")}')
    lines.append('')
    lines.append('stage times (s):')
    for name, seconds in r.stages.items():
        lines.append(f'  {name:24s} {seconds:8.1f}')
    lines.append(f'  {"total":24s} {r.total_s:8.1f}')
    if r.images:
        lines.append('')
        lines.append('pictures:')
        for name, path in r.images.items():
            lines.append(f'  {name:24s} {path}')
    return '\n'.join(lines)


def write_report(out_dir: str | os.PathLike, report: DemoReport) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.txt`` atomically; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_json(out / 'report.json', report.to_dict())
    text_path = atomic_write_text(out / 'report.txt', format_report(report) + '\n')
    return Path(json_path), Path(text_path)


# -- pictures ------------------------------------------------------------------------
def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB (or mono) uint8 image as PNG atomically; return the path."""
    import cv2

    image = np.asarray(rgb)
    if image.dtype != np.uint8:
        raise ValueError(f'images must be uint8, got {image.dtype}')
    if image.ndim == 3:
        image = np.ascontiguousarray(image[..., ::-1])  # OpenCV writes BGR
    ok, data = cv2.imencode('.png', image)
    if not ok:
        raise RuntimeError(f'PNG encoding of a {image.shape} image failed')
    return Path(atomic_write_bytes(path, data.tobytes()))


def _titled(image: np.ndarray, title: str, height: int = 22) -> np.ndarray:
    import cv2

    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    bar = np.full((height, image.shape[1], 3), 32, np.uint8)
    cv2.putText(bar, title, (4, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def _fit(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return resize_ids(image, hw)  # nearest: colour-coded masks must not blend colours


def panel(rows: Sequence[Sequence[tuple[str, np.ndarray]]], gap: int = 4) -> np.ndarray:
    """
    Return one RGB picture of titled images laid out in rows.

    Every image is scaled (nearest) to the size of the first one, so masks and
    overlays of different resolutions line up.
    """
    if not rows or not rows[0]:
        raise ValueError('panel needs at least one image')
    first = np.asarray(rows[0][0][1])
    hw = first.shape[:2]
    built = []
    for row in rows:
        tiles = [_titled(_fit(np.asarray(img), hw), title) for title, img in row]
        spacer = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
        parts = []
        for i, tile in enumerate(tiles):
            parts += ([spacer] if i else []) + [tile]
        built.append(np.concatenate(parts, axis=1))
    width = max(r.shape[1] for r in built)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
              for r in built]
    spacer = np.full((gap, width, 3), 255, np.uint8)
    parts = []
    for i, row in enumerate(padded):
        parts += ([spacer] if i else []) + [row]
    return np.concatenate(parts, axis=0)


def legend_strip(classes: Mapping[int, tuple[str, Iterable[int]]], width: int,
                 height: int = 22) -> np.ndarray:
    """Return an RGB strip naming each class next to a swatch of its colour."""
    import cv2

    strip = np.full((height, width, 3), 255, np.uint8)
    x = 4
    for cid in sorted(classes):
        name, color = classes[cid]
        color = tuple(int(c) for c in color)
        cv2.rectangle(strip, (x, 5), (x + 12, height - 6), color, -1)
        cv2.rectangle(strip, (x, 5), (x + 12, height - 6), (0, 0, 0), 1)
        cv2.putText(strip, name, (x + 16, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (0, 0, 0), 1, cv2.LINE_AA)
        x += 16 + 8 * len(name) + 14
        if x >= width:
            break
    return strip


def with_legend(image: np.ndarray, classes: Mapping[int, tuple[str, Iterable[int]]]
                ) -> np.ndarray:
    """Return ``image`` with a legend strip below it."""
    return np.concatenate([image, legend_strip(classes, image.shape[1])], axis=0)


def format_progress(phase: str, progress: float, eta_seconds: float,
                    losses: Mapping[str, float] | None = None, width: int = 24) -> str:
    """
    Return one progress-bar line for the learning step's feedback.

    ``progress`` is the whole job's fraction (0..1); an ETA below 0 means unknown.
    """
    frac = min(1.0, max(0.0, float(progress) if math.isfinite(float(progress)) else 0.0))
    filled = int(round(frac * width))
    bar = '#' * filled + '-' * (width - filled)
    eta = f'eta {eta_seconds:4.0f} s' if eta_seconds is not None and eta_seconds >= 0 \
        and math.isfinite(eta_seconds) else 'eta    ? s'
    text = f'[{bar}] {100 * frac:5.1f}% {phase:15s} {eta}'
    if losses:
        text += '  ' + ' '.join(f'{k} {v:.3f}' for k, v in losses.items()
                                if v is not None and math.isfinite(v))
    return text
