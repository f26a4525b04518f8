"""
Evaluation of a model on a split: mIoU (old / new / all / per class) and margin statistics.

The counting itself (confusion matrix, IoU) is ``ldka_ros.learning.metrics``, torch-free,
so the demo, the hot-swap check and the learning job score masks the same way.

mIoU follows MiB / PLOP: one confusion matrix over the whole split, pixels labelled 255
ignored, IoU per class, averaged over the classes of a group that occur in the ground
truth. "old" is background plus the classes learned before the current step, "new"
the classes added after the base step, "all" every seen class.

The logit margin (top-1 minus top-2 logit over the seen classes) is what LDKA is built
on (docs METHOD.md): pixels with a small margin are the ones that flip when new classes
are learned. We report the fraction below ``low_margin`` and a histogram.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
import io
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from ldka_ros.fsio import atomic_write_bytes
from ldka_ros.learning.metrics import ConfusionMatrix, IGNORE_INDEX
import numpy as np
import torch

#: Margin histogram bin edges (logit units); the last bin also holds larger margins.
MARGIN_EDGES = np.linspace(0.0, 20.0, 41)


@dataclass
class EvalResult:
    """Metrics of one evaluation; ``margin_hist`` is ``(edges, counts)`` as lists."""

    per_class_iou: dict[int, float]
    miou_all: float
    miou_old: float
    miou_new: float
    pixel_accuracy: float
    low_margin_fraction: float
    margin_hist: tuple[list, list]
    num_pixels: int

    def to_dict(self) -> dict:
        """Return a JSON-ready dict (NaN becomes None; class ids become strings)."""
        def clean(value):
            return None if isinstance(value, float) and math.isnan(value) else value

        data = asdict(self)
        data['per_class_iou'] = {str(k): clean(v) for k, v in self.per_class_iou.items()}
        for key in ('miou_all', 'miou_old', 'miou_new', 'pixel_accuracy',
                    'low_margin_fraction'):
            data[key] = clean(data[key])
        data['margin_hist'] = [list(self.margin_hist[0]), list(self.margin_hist[1])]
        return data


def _batches(dataset, batch_size: int):
    """Yield lists of (image, label) tensors of equal size, at most ``batch_size`` long."""
    batch: list = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        if batch and (len(batch) >= batch_size or batch[-1][0].shape != image.shape):
            yield batch
            batch = []
        batch.append((image, label))
    if batch:
        yield batch


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset, seen: Sequence[int], old: Sequence[int],
             new: Sequence[int], device: str | torch.device = 'cpu', batch_size: int = 4,
             low_margin: float = 1.0,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """
    Evaluate ``model`` on ``dataset`` (items: image 3xHxW float, label HxW long).

    Predictions and margins use only the ``seen`` slots, so a slot that is not learned
    yet can never win. Labels should already have unseen classes set to 255
    (``protocols.eval_set``). ``new`` may be empty (``miou_new`` is then NaN).
    ``progress(done, total)`` is called after each batch. The model is left on
    ``device`` in the train/eval mode it had.
    """
    seen = sorted({int(c) for c in seen})
    if not seen:
        raise ValueError('seen must list at least one class id')
    num_classes = max(seen + [int(c) for c in old] + [int(c) for c in new]) + 1
    cm = ConfusionMatrix(num_classes)
    seen_t = torch.tensor(seen, device=device)
    hist = np.zeros(len(MARGIN_EDGES) - 1, dtype=np.int64)
    low = 0
    total, done = len(dataset), 0
    was_training = model.training
    model.to(device).eval()
    try:
        for batch in _batches(dataset, batch_size):
            images = torch.stack([b[0] for b in batch]).to(device)
            labels = torch.stack([b[1] for b in batch]).to(device)
            out = model(images)
            logits = out.logits if hasattr(out, 'logits') else out
            logits = logits.float().index_select(1, seen_t)
            if len(seen) > 1:
                top = logits.topk(2, dim=1).values
                margin = top[:, 0] - top[:, 1]
            else:
                margin = torch.full_like(logits[:, 0], float('inf'))
            pred = seen_t[logits.argmax(1)]
            cm.update(pred, labels)
            valid = labels != IGNORE_INDEX
            m = margin[valid].clamp(max=float(MARGIN_EDGES[-1]) - 1e-6).cpu().numpy()
            hist += np.histogram(m, bins=MARGIN_EDGES)[0]
            low += int((margin[valid] < low_margin).sum())
            done += len(batch)
            if progress is not None:
                progress(done, total)
    finally:
        model.train(was_training)
    iou = np.where(cm.gt_pixels() > 0, cm.iou(), np.nan)  # absent from GT: not scored
    counted = int(cm.matrix.sum())
    return EvalResult(
        per_class_iou={c: float(iou[c]) for c in seen},
        miou_all=cm.mean_iou(seen), miou_old=cm.mean_iou(old),
        miou_new=cm.mean_iou(new) if len(new) else math.nan,
        pixel_accuracy=cm.pixel_accuracy(),
        low_margin_fraction=low / counted if counted else math.nan,
        margin_hist=(MARGIN_EDGES.tolist(), hist.tolist()), num_pixels=counted)


# -- plots -----------------------------------------------------------------------------
def _save_figure(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=120, bbox_inches='tight')
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_miou_curves(rows: Iterable[Mapping], path: str | os.PathLike,
                     metrics: Sequence[str] = ('miou_all', 'miou_old', 'miou_new'),
                     title: str | None = None) -> Path:
    """
    Plot mIoU after each step for each method; write a PNG at ``path``.

    ``rows``: dicts with ``method``, ``step`` and the metric keys (``miou_all`` ...),
    one per (method, step[, seed]); seeds are averaged and their spread drawn as a band.
    Metric values may be fractions or percentages; missing / NaN values are skipped.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = list(rows)
    if not rows:
        raise ValueError('plot_miou_curves needs at least one row')
    metrics = [m for m in metrics if any(_num(r.get(m)) is not None for r in rows)]
    if not metrics:
        raise ValueError('rows hold none of the metrics to plot')
    methods = list(dict.fromkeys(str(r['method']) for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for method in methods:
            by_step: dict[int, list[float]] = {}
            for r in rows:
                value = _num(r.get(metric))
                if str(r['method']) == method and value is not None:
                    by_step.setdefault(int(r['step']), []).append(value)
            if not by_step:
                continue
            steps = sorted(by_step)
            mean = np.array([np.mean(by_step[s]) for s in steps])
            ax.plot(steps, mean, marker='o', label=method)
            if any(len(by_step[s]) > 1 for s in steps):
                lo = [min(by_step[s]) for s in steps]
                hi = [max(by_step[s]) for s in steps]
                ax.fill_between(steps, lo, hi, alpha=0.2)
        ax.set_title(metric.replace('miou_', 'mIoU ').replace('_', ' '))
        ax.set_xlabel('step')
        ax.set_ylabel('mIoU')
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def _num(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def plot_margin_histograms(hists: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                           path: str | os.PathLike, title: str | None = None) -> Path:
    """
    Plot normalised margin histograms, one line per label; write a PNG at ``path``.

    ``hists``: label -> ``(edges, counts)`` as in ``EvalResult.margin_hist``.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    if not hists:
        raise ValueError('plot_margin_histograms needs at least one histogram')
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, (edges, counts) in hists.items():
        edges, counts = np.asarray(edges, float), np.asarray(counts, float)
        if edges.size != counts.size + 1:
            raise ValueError(f'histogram {label!r}: {edges.size} edges for {counts.size} bins')
        total = counts.sum()
        ax.step(edges[:-1], counts / total if total else counts, where='post', label=str(label))
    ax.set_xlabel('logit margin (top-1 - top-2)')
    ax.set_ylabel('fraction of pixels')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save_figure(fig, path)
