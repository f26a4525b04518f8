"""
Evaluation: confusion matrix, mIoU (old / new / all / per class) and margin statistics.

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
import numpy as np
import torch

IGNORE_INDEX = 255
#: Margin histogram bin edges (logit units); the last bin also holds larger margins.
MARGIN_EDGES = np.linspace(0.0, 20.0, 41)


class ConfusionMatrix:
    """``num_classes`` x ``num_classes`` pixel counts, rows = ground truth, cols = prediction."""

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix[:] = 0

    def update(self, pred, target) -> None:
        """
        Add a batch of predictions and targets (numpy or torch, any equal shapes).

        Target pixels equal to 255 are ignored; any other id outside the matrix, in the
        target or the prediction, is a ValueError (it means the caller mixed id spaces).
        """
        n = self.num_classes
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            pred_t = torch.as_tensor(pred).reshape(-1).long()
            target_t = torch.as_tensor(target, device=pred_t.device).reshape(-1).long()
            if pred_t.shape != target_t.shape:
                raise ValueError(f'pred has {pred_t.numel()} pixels, target {target_t.numel()}')
            valid = target_t != IGNORE_INDEX
            pred_t, target_t = pred_t[valid], target_t[valid]
            if pred_t.numel() == 0:
                return
            low = int(torch.minimum(pred_t.min(), target_t.min()))
            high = int(torch.maximum(pred_t.max(), target_t.max()))
            if low < 0 or high >= n:
                raise ValueError(f'class id {low if low < 0 else high} outside 0..{n - 1}')
            counts = torch.bincount(target_t * n + pred_t, minlength=n * n)
            self.matrix += counts.cpu().numpy().reshape(n, n)
            return
        pred_a = np.asarray(pred).reshape(-1).astype(np.int64)
        target_a = np.asarray(target).reshape(-1).astype(np.int64)
        if pred_a.shape != target_a.shape:
            raise ValueError(f'pred has {pred_a.size} pixels, target {target_a.size}')
        valid = target_a != IGNORE_INDEX
        pred_a, target_a = pred_a[valid], target_a[valid]
        if pred_a.size == 0:
            return
        low, high = min(pred_a.min(), target_a.min()), max(pred_a.max(), target_a.max())
        if low < 0 or high >= n:
            raise ValueError(f'class id {low if low < 0 else high} outside 0..{n - 1}')
        self.matrix += np.bincount(target_a * n + pred_a, minlength=n * n).reshape(n, n)

    def iou(self) -> np.ndarray:
        """Return per-class IoU, NaN where a class is in neither target nor prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid='ignore', divide='ignore'):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def gt_pixels(self) -> np.ndarray:
        """Return the number of ground-truth pixels of each class."""
        return self.matrix.sum(1)

    def pixel_accuracy(self) -> float:
        """Return the fraction of counted pixels predicted right (NaN if none)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else math.nan

    def mean_iou(self, classes: Iterable[int] | None = None) -> float:
        """Return mean IoU over ``classes`` (default all) that occur in the ground truth."""
        ids = range(self.num_classes) if classes is None else classes
        present = [int(c) for c in ids if self.gt_pixels()[int(c)] > 0]
        if not present:
            return math.nan
        return float(np.mean(self.iou()[present]))


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
