# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Export a trained model and publish it as a registry version: the one path for every publisher.

Why one path: a version published by the learner's job and one published by hand with
``ldka registry publish`` must be alike in everything the robot relies on: an ONNX graph
whose argmax agrees with the torch model (checked before anything is published), a
checkpoint the next learning step can start from, a legend that matches the graph's
active slots (the registry refuses one that does not), and the same manifest fields
(``input_hw``, ``export`` with the digests and the parity report). Two copies of that
recipe would drift apart, and a hand-published base model would then fail on the robot
in ways the learner's versions do not.

Both steps take a ``progress(fraction, message)`` callback, so the job can report its
phases and the command line can draw a bar, and neither imports torch before it runs.
Imports no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ldka_ros.errors import UserError
import numpy as np

#: ``progress(fraction of this step done in [0, 1], message)``.
Progress = Callable[[float, str], None]


@dataclass
class ExportedGraph:
    """An ONNX file that passed the parity check, and what the manifest records about it."""

    path: Path
    info: dict


def _quiet(_fraction: float, _message: str) -> None:
    """Progress sink for callers that do not report."""


def legend(classes) -> list[dict]:
    """
    Return the manifest legend of a ``ClassRegistry``: id, name, colour and adding step.

    Why the step: the segmentation node and ``ldka registry show`` tell an operator which
    learning step taught each class.
    """
    return [{'id': int(c.id), 'name': c.name, 'color': [int(v) for v in c.color],
             'step': int(c.step)} for c in classes]


def synthetic_frames(count: int, input_hw: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """
    Return ``count`` deterministic uint8 RGB frames of smooth colour regions with edges.

    Why: a checkpoint published by hand comes without camera frames, and a parity check
    on nothing would prove nothing. Smooth regions with sharp borders resemble a scene
    closely enough that the model's decisions are mostly clear-cut, like on real frames;
    real images (``images=``) are still preferred where the caller has them.
    """
    import cv2

    h, w = (int(v) for v in input_hw)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(int(count)):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        blocks = cv2.resize(rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8), (w, h),
                            interpolation=cv2.INTER_NEAREST)
        frames.append(((smooth.astype(np.uint16) + blocks) // 2).astype(np.uint8))
    return frames


def export_checked(model, path: str | os.PathLike, input_hw: Sequence[int],
                   images: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
                   metadata: Mapping[str, Any] | None = None,
                   progress: Progress = _quiet) -> ExportedGraph:
    """
    Export ``model`` to ONNX at ``path`` and check it against torch on ``images``.

    ``images`` may be a callable, called only after the export succeeded (the job reads
    its frames from disk). A graph whose argmax agreement with torch is below the
    export's threshold raises :class:`UserError` (nothing is published then); the caller
    removes the file with its work directory.
    """
    from ldka_ros.inference.export import check_parity, export_onnx

    path = Path(path)
    hw = (int(input_hw[0]), int(input_hw[1]))
    exported = export_onnx(model, path, hw, metadata=dict(metadata or {}))
    progress(0.5, f'exported {exported.size_bytes} bytes in {exported.seconds:.1f} s; '
                  'checking parity')
    frames = list(images() if callable(images) else images)
    parity = check_parity(model, path, frames, providers='cpu')
    if not parity.passed:
        raise UserError(f'the exported ONNX graph disagrees with the torch model: argmax '
                        f'agreement {parity.argmax_agreement:.4%} < '
                        f'{parity.min_agreement:.2%} on {parity.num_images} frames; '
                        'nothing was published')
    progress(1.0, f'parity {parity.argmax_agreement:.4%} argmax agreement')
    info = {'sha256': exported.sha256, 'structure_digest': exported.structure_digest,
            'size_bytes': exported.size_bytes, 'opset': exported.opset,
            'seconds': round(exported.seconds, 3), 'parity': parity.to_dict()}
    return ExportedGraph(path=path, info=info)


def publish_model(registry, model, classes, graph: ExportedGraph, work: str | os.PathLike,
                  *, input_hw: Sequence[int], parent: str | None, step: int,
                  metrics: dict | None = None, extra: Mapping[str, Any] | None = None,
                  checkpoint_meta: dict | None = None,
                  artefacts: Mapping[str, str | os.PathLike] | None = None,
                  activate: bool = False, progress: Progress = _quiet):
    """
    Save the checkpoint beside ``graph`` and publish both as one version; return its manifest.

    ``classes`` is the model's ``ClassRegistry`` (saved in the checkpoint and turned into
    the legend), ``artefacts`` further files (the job's feature bank), ``extra`` further
    manifest fields; ``input_hw`` and ``export`` (the graph's digests and parity) are
    always recorded. The registry publishes atomically: on any failure it is unchanged.
    """
    from ldka_ros.learning.checkpoint import save_checkpoint

    work = Path(work)
    checkpoint = save_checkpoint(work / 'checkpoint.pt', model.cpu(), classes,
                                 meta=dict(checkpoint_meta or {}))
    files = {'checkpoint': checkpoint, 'onnx': graph.path}
    files.update(artefacts or {})
    fields = {'input_hw': [int(input_hw[0]), int(input_hw[1])]}
    fields.update(extra or {})
    fields['export'] = graph.info
    progress(0.2, 'copying artefacts into the registry')
    return registry.publish(files, legend(classes), parent=parent, step=int(step),
                            metrics=dict(metrics or {}), extra=fields, activate=activate)
