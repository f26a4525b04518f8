# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
INT8 static quantisation of an exported graph, calibrated on stored real frames.

Why static (QDQ) and calibrated on the robot's own frames: dynamic quantisation only
covers MatMul-like ops and would leave the convolutions, where the time goes, in float.
Static quantisation needs the range of every activation, and ranges measured on
synthetic pixels would not be those of a camera; the frame store (operator-labelled
frames) or a dataset's images are what the model will see. Only the network's
convolutions are quantised, and not the stem nor the slot classifier (``_float_nodes``);
the in-graph pre-processing and the top-2 / confidence / margin post-processing stay
float, so ids, probabilities and margins keep their meaning and the graph's signature
(uint8 image in, ``class_ids`` / ``confidence`` / ``margin`` out) is unchanged. The
result is recorded in the metadata (``precision: int8`` and how it was calibrated),
which ``OnnxRuntimeBackend.describe()`` reports.

Imports no ROS; onnxruntime's quantisation tools are imported when a graph is quantised.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
import logging
import os
from pathlib import Path
import tempfile
import time
from typing import Any, Iterable, Iterator, Sequence

from ldka_ros.fsio import atomic_write_bytes
from ldka_ros.imaging.resize import resize_image
from ldka_ros.inference.export import file_sha256, INPUT_NAME, read_metadata, set_metadata
import numpy as np

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp')
#: Ops quantised by default: the convolutions carry nearly all the work of the graph.
DEFAULT_OP_TYPES = ('Conv',)
CALIBRATION_METHODS = ('minmax', 'entropy', 'percentile')


@dataclass
class QuantizeReport:
    """What :func:`quantize_static_int8` wrote and how it was calibrated."""

    path: str
    source: str
    source_sha256: str
    sha256: str
    size_bytes: int
    calibration_frames: int
    calibration_source: str
    method: str
    per_channel: bool
    op_types: list[str]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_images(folder: str | os.PathLike, limit: int = 32) -> list[np.ndarray]:
    """
    Return up to ``limit`` RGB frames of a folder, spread evenly over its sorted files.

    ``folder`` is a frame store or dataset root (its ``images/`` is used) or a folder of
    images. Spread, not the first ``limit``: consecutive frames of a drive are nearly the
    same picture, and ranges calibrated on one street corner clip the next one.
    """
    from ldka_ros.learning.label_files import read_rgb

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f'calibration folder {root} does not exist')
    if (root / 'images').is_dir():
        root = root / 'images'
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f'no .png/.jpg images in {root} to calibrate on')
    if int(limit) < 1:
        raise ValueError(f'calibration needs at least one frame, got limit={limit}')
    picks = np.unique(np.linspace(0, len(files) - 1, num=min(int(limit), len(files)))
                      .round().astype(int))
    return [read_rgb(files[i]) for i in picks]


class _FrameReader:
    """onnxruntime ``CalibrationDataReader``: each frame resized to the graph's input."""

    def __init__(self, frames: Sequence[np.ndarray], hw: tuple[int, int]) -> None:
        self._frames = [resize_image(np.asarray(f), hw) for f in frames]
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= len(self._frames):
            return None
        frame = self._frames[self._next]
        self._next += 1
        return {INPUT_NAME: np.ascontiguousarray(frame)[None]}

    def rewind(self) -> None:
        self._next = 0


def quantize_static_int8(float_path: str | os.PathLike, out_path: str | os.PathLike,
                         frames: Iterable[np.ndarray], *, calibration_source: str = '',
                         method: str = 'minmax', per_channel: bool = True,
                         op_types: Sequence[str] = DEFAULT_OP_TYPES) -> QuantizeReport:
    """
    Quantise an exported float graph to INT8 (QDQ) calibrated on ``frames``; write it atomically.

    ``frames``: uint8 RGB frames of any size (resized to the graph's input like the
    pipeline does). ``method``: how activation ranges are taken from the calibration
    outputs (:data:`CALIBRATION_METHODS`). Weights are signed INT8 (per output channel
    by default), activations unsigned INT8. Raises ValueError for bad arguments or a
    graph that is not an ldka_ros float export.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, quantize_static,
                                          QuantType)

    src, out = Path(float_path), Path(out_path)
    meta = read_metadata(src)
    if meta.get('precision', 'fp32') != 'fp32' or 'input_hw' not in meta:
        raise ValueError(f'{src} is not an ldka_ros float export (metadata precision '
                         f'{meta.get("precision")!r}, input_hw {meta.get("input_hw")!r})')
    if method not in CALIBRATION_METHODS:
        raise ValueError(f'method must be one of {CALIBRATION_METHODS}, got {method!r}')
    if out.suffix != '.onnx':
        raise ValueError(f'INT8 output path must end in .onnx, got {out}')
    frames = [np.asarray(f) for f in frames]
    if not frames or any(f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3
                         for f in frames):
        raise ValueError('calibration needs at least one uint8 (H, W, 3) RGB frame')
    hw = (int(meta['input_hw'][0]), int(meta['input_hw'][1]))
    methods = {'minmax': CalibrationMethod.MinMax, 'entropy': CalibrationMethod.Entropy,
               'percentile': CalibrationMethod.Percentile}
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='.int8-', dir=out.parent) as tmp:
        prepared = _preprocess(src, Path(tmp))
        quantized = Path(tmp) / 'int8.onnx'
        with _quiet_root_logger():
            quantize_static(str(prepared), str(quantized), _FrameReader(frames, hw),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                            nodes_to_exclude=_float_nodes(prepared),
                            per_channel=bool(per_channel), activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=methods[method],
                            extra_options={'CalibTensorRangeSymmetric': False})
        extra = {'precision': 'int8',
                 'quantization': {'format': 'QDQ', 'method': method,
                                  'per_channel': bool(per_channel),
                                  'op_types': list(op_types),
                                  'calibration_frames': len(frames),
                                  'calibration_source': str(calibration_source),
                                  'float_sha256': file_sha256(src)}}
        data = _with_metadata(quantized, {**meta, **extra})
    atomic_write_bytes(out, data)
    return QuantizeReport(path=str(out), source=str(src),
                          source_sha256=extra['quantization']['float_sha256'],
                          sha256=file_sha256(out), size_bytes=len(data),
                          calibration_frames=len(frames),
                          calibration_source=str(calibration_source), method=method,
                          per_channel=bool(per_channel), op_types=list(op_types),
                          seconds=time.perf_counter() - started)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """
    Raise the root logger to WARNING while onnxruntime's quantiser runs.

    Why: it logs one INFO line per adjusted weight scale on the root logger (hundreds
    per graph), which would bury a node's or the command's own messages.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _preprocess(src: Path, tmp: Path) -> Path:
    """
    Run onnxruntime's quantisation pre-processing (shape inference, basic fusions).

    Why: Conv+BatchNorm fusion and known shapes let the quantiser place one Q/DQ pair per
    convolution; without it the ranges of intermediate tensors that fusion later removes
    are calibrated for nothing.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / 'prepared.onnx'
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
    return prepared


def _float_nodes(path: Path) -> list[str]:
    """
    Return the names of the first and the last convolution, which stay float.

    Why the last (the slot classifier): the export folds the slot mask into its bias, so
    an inactive slot's logit is about -1e4; one 8-bit range from -1e4 up to the active
    logits has steps of tens of logits, every active slot would round to the same value
    and the argmax would be meaningless. Why the first (the stem): measured on CamVid
    with a trained model, an INT8 stem alone cut class-id agreement with the float graph
    from about 94 % to about 52 % (three input channels, per-channel weights stretched by
    the folded batch norm). Both are small next to the rest of the network.
    """
    import onnx

    convs = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node
             if n.op_type == 'Conv']
    return sorted({convs[0], convs[-1]}) if convs else []


def _with_metadata(path: Path, meta: dict[str, Any]) -> bytes:
    """Return the serialised graph at ``path`` with ``metadata_props`` set to ``meta``."""
    import onnx

    proto = onnx.load(str(path))
    set_metadata(proto, meta)
    return proto.SerializeToString()


def graph_agreement(reference: str | os.PathLike, candidate: str | os.PathLike,
                    frames: Iterable[np.ndarray]) -> dict[str, float]:
    """
    Run two exported graphs on the same frames; return their class-id agreement.

    Why beside the quantiser: an INT8 graph cannot pass the float parity check (99.9 %
    agreement with torch) and is not meant to; what it is judged by is how often it
    still picks the float graph's class, overall and near class boundaries, where
    rounding flips the winner first. Frames of any size are resized to the input.
    """
    from ldka_ros.learning.metrics import boundary_mask
    from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

    ref = OnnxRuntimeBackend(reference, providers='cpu').load()
    cand = OnnxRuntimeBackend(candidate, providers='cpu').load()
    try:
        if ref.input_hw != cand.input_hw:
            raise ValueError(f'graphs take different sizes: {ref.input_hw} vs {cand.input_hw}')
        same = total = edge_same = edge_total = 0
        for frame in frames:
            batch = resize_image(np.asarray(frame), ref.input_hw)[None]
            a = ref.infer(batch).class_ids[0]
            b = cand.infer(batch).class_ids[0]
            edge = boundary_mask(a)
            same += int(np.count_nonzero(a == b))
            total += a.size
            edge_same += int(np.count_nonzero((a == b)[edge]))
            edge_total += int(edge.sum())
    finally:
        ref.release()
        cand.release()
    if not total:
        raise ValueError('graph_agreement needs at least one frame')
    return {'agreement': same / total, 'boundary_agreement': edge_same / max(1, edge_total),
            'pixels': total}
