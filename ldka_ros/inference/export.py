# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Export a :class:`SegModel` to one self-contained ONNX file, and check it against torch.

Why the graph takes raw uint8 pixels and ends in argmax/confidence/margin: the camera
node then hands its buffer over untouched, every backend (ONNX Runtime, TensorRT) runs
the *same* pre- and post-processing, and only ``H*W`` bytes plus two float maps leave
the accelerator instead of ``S*H*W`` logits. The slot mask is a constant inside the
graph (``SegModel.classify`` adds ``slot_offset()``), so an inactive class can never win.

Post-processing lives in :func:`postprocess` (modes in ``inference.modes``, recorded as
``postprocess`` in the metadata), which the eager
:class:`~ldka_ros.inference.backends.torch_backend.TorchBackend` calls too, so the torch
path and the exported graph cannot drift apart. The default takes the top-2 at four
times the decoder's resolution, not at the input size: measured on CamVid, the same
mIoU for a fifth less latency (docs/benchmarks/inference_latency.md).

Two digests identify an export: ``sha256`` of the file (what exactly runs, the TensorRT
engine cache key) and :func:`onnx_structure_digest` (the graph without initializer
values): equal structure digests mean only weights changed, so a TensorRT engine can be
refitted instead of rebuilt.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
import hashlib
import json
import os
from pathlib import Path
import tempfile
import time
from typing import Any, Iterable, Sequence
import warnings

from ldka_ros.fsio import atomic_write_bytes
from ldka_ros.imaging.resize import resize_image
from ldka_ros.inference.modes import (check_postprocess, DEFAULT_POSTPROCESS,  # noqa: F401
                                      POSTPROCESS_MODES)
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ONNX_FORMAT = 'ldka_ros.onnx/1'
INPUT_NAME = 'image'
OUTPUT_NAMES = ('class_ids', 'confidence', 'margin')
DEFAULT_INPUT_HW = (240, 320)
#: The agreement with torch an export must reach on real images (ARCHITECTURE.md).
MIN_ARGMAX_AGREEMENT = 0.999
#: Upsampling factor of the decoder-resolution logits before the top-2, per mode
#: (``inference.modes`` describes the modes).
_UPSAMPLE = {'decoder-x4': 4, 'decoder-x2': 2, 'decoder': 1}


def postprocess_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Turn slot logits ``(B, S, H, W)`` into ``(class_ids uint8, confidence, margin)``.

    One ``topk(k=2)`` gives both the argmax and the margin (top-1 minus top-2 logit).
    The top-1 softmax probability needs no full softmax: ``1 / sum(exp(l - l_max))``.
    Shared by the exported graph and the eager torch backend (see module docstring).
    """
    values, indices = torch.topk(logits, k=2, dim=1)
    top1 = values[:, 0]
    margin = top1 - values[:, 1]
    confidence = torch.reciprocal(torch.exp(logits - top1.unsqueeze(1)).sum(dim=1))
    return indices[:, 0].to(torch.uint8), confidence.float(), margin.float()


def postprocess(logits: torch.Tensor, out_hw: tuple[int, int], mode: str = DEFAULT_POSTPROCESS
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Slot logits at the decoder's resolution -> outputs at ``out_hw`` in ``mode``.

    Why not always upsample the logits: bilinear upsampling of all ``S`` slots to the
    input size, and a top-2 over them, cost ``S x H x W`` work that grows with both the
    slot count and the camera resolution, while only the winning id and two scores per
    pixel leave the graph. The ``'decoder*'`` modes take the top-2 at a small
    resolution and bring only three maps to ``out_hw`` (ids by nearest neighbour, since
    an interpolated id would be another class). Shared by the graph and the eager torch
    backend, so both compute the same thing in every mode.
    """
    h, w = int(out_hw[0]), int(out_hw[1])
    if check_postprocess(mode) == 'full':
        return postprocess_logits(_bilinear(logits, (h, w)))
    factor = _UPSAMPLE[mode]
    logits = _bilinear(logits, (min(h, factor * logits.shape[-2]),
                                min(w, factor * logits.shape[-1])))
    class_ids, confidence, margin = postprocess_logits(logits)
    if tuple(class_ids.shape[-2:]) == (h, w):
        return class_ids, confidence, margin
    # Ids travel as float: every runtime (TensorRT included) resizes float tensors.
    ids = F.interpolate(class_ids.unsqueeze(1).float(), size=(h, w), mode='nearest')
    maps = _bilinear(torch.stack([confidence, margin], dim=1), (h, w))
    return ids[:, 0].to(torch.uint8), maps[:, 0], maps[:, 1]


def _bilinear(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, C, h, w)`` to ``hw`` (half-pixel centres, as in training)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode='bilinear', align_corners=False)


class ExportWrapper(nn.Module):
    """
    uint8 ``(B, H, W, 3)`` RGB -> ``(class_ids, confidence, margin)``; see module docstring.

    ``model`` is a :class:`SegModel` (normalisation and the slot mask are inside it; its
    logits are taken at the decoder's resolution, before ``forward`` would upsample them)
    or any module that maps float NCHW in [0, 1] to logits at any resolution (the tiny
    probe nets of ``backends.select``). ``postprocess``: one of :data:`POSTPROCESS_MODES`.
    """

    def __init__(self, model: nn.Module, postprocess: str = DEFAULT_POSTPROCESS) -> None:
        super().__init__()
        self.model = model
        self.postprocess = check_postprocess(postprocess)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if all(hasattr(self.model, a) for a in ('extract', 'classify', 'normalize')):
            logits = self.model.classify(self.model.extract(self.model.normalize(x)))
        else:
            out = self.model(x)
            logits = out.logits if hasattr(out, 'logits') else out
        return postprocess(logits, (int(image.shape[1]), int(image.shape[2])),
                           self.postprocess)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote."""

    path: str
    input_hw: tuple[int, int]
    opset: int
    dynamic_batch: bool
    num_slots: int | None
    active_classes: list[int] | None
    sha256: str
    structure_digest: str
    size_bytes: int
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ParityReport:
    """How closely an ONNX file reproduces the torch model on given images."""

    argmax_agreement: float
    max_abs_diff_margin: float
    max_abs_diff_confidence: float
    num_images: int
    num_pixels: int
    min_agreement: float = MIN_ARGMAX_AGREEMENT
    providers: list[str] = field(default_factory=list)
    postprocess: str = 'full'

    @property
    def passed(self) -> bool:
        return self.argmax_agreement >= self.min_agreement

    def to_dict(self) -> dict:
        d = asdict(self)
        d['passed'] = self.passed
        return d


def set_metadata(proto, meta: dict[str, Any]) -> None:
    """Replace ``proto``'s ``metadata_props`` with ``meta`` (JSON values); name the producer."""
    from ldka_ros import __version__

    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = str(key)
        entry.value = json.dumps(value)
    proto.producer_name = 'ldka_ros'
    proto.producer_version = __version__


def export_onnx(model: nn.Module, path: str | os.PathLike,
                input_hw: tuple[int, int] = DEFAULT_INPUT_HW, opset: int = 17,
                dynamic_batch: bool = False, metadata: dict[str, Any] | None = None,
                postprocess: str = DEFAULT_POSTPROCESS) -> ExportReport:
    """
    Export ``model`` to ``path`` (one file, written atomically); return an :class:`ExportReport`.

    The graph: input ``image`` uint8 ``(1, H, W, 3)`` RGB (``(N, H, W, 3)`` with
    ``dynamic_batch``); outputs ``class_ids`` uint8, ``confidence`` and ``margin`` float32,
    all ``(1, H, W)``. ``postprocess`` names how logits become outputs
    (:data:`POSTPROCESS_MODES`; recorded as ``postprocess`` in the metadata, so that
    serving and parity checks know what the graph computes). ``metadata``
    (JSON-serialisable values) is stored in the model's ``metadata_props`` beside the
    input size, slot count, active classes and the ldka_ros version. The caller's model
    is not modified (a CPU copy is exported).
    """
    import onnx

    from ldka_ros import __version__

    h, w = _check_hw(input_hw)
    check_postprocess(postprocess)
    if not 13 <= int(opset) <= 21:
        raise ValueError(f'opset {opset} unsupported; use 13..21 (17 is the default)')
    path = Path(path)
    if path.suffix != '.onnx':
        raise ValueError(f'export path must end in .onnx, got {path}')
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proto = _trace(model, path, (h, w), int(opset), dynamic_batch, postprocess)
    num_slots = getattr(model, 'num_slots', None)
    active = model.active_classes() if hasattr(model, 'active_classes') else None
    meta: dict[str, Any] = {
        'format': ONNX_FORMAT,
        'ldka_ros_version': __version__,
        'input_hw': [h, w],
        'input_layout': 'NHWC uint8 RGB',
        'outputs': list(OUTPUT_NAMES),
        'postprocess': postprocess,
        'precision': 'fp32',
        'num_slots': num_slots,
        'active_classes': active,
        'dynamic_batch': bool(dynamic_batch),
    }
    if hasattr(model, 'config') and hasattr(model.config, 'to_dict'):
        meta['model_config'] = model.config.to_dict()
    meta.update(metadata or {})
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    atomic_write_bytes(path, data)
    return ExportReport(path=str(path), input_hw=(h, w), opset=int(opset),
                        dynamic_batch=bool(dynamic_batch), num_slots=num_slots,
                        active_classes=active, sha256=hashlib.sha256(data).hexdigest(),
                        structure_digest=onnx_structure_digest(proto), size_bytes=len(data),
                        seconds=time.perf_counter() - started, metadata=meta)


def _trace(model: nn.Module, path: Path, hw: tuple[int, int], opset: int,
           dynamic_batch: bool, postprocess: str):
    """Trace a CPU copy of ``model`` inside the uint8-in, ids-out wrapper; return the proto."""
    import onnx

    wrapper = ExportWrapper(copy.deepcopy(model).cpu().float(), postprocess).eval()
    dummy = torch.full((1, hw[0], hw[1], 3), 128, dtype=torch.uint8)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: 'batch'} for name in (INPUT_NAME,) + OUTPUT_NAMES}
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.stem}.', suffix='.export.onnx', dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is deprecated upstream but writes one file and
            # handles every backbone we ship; its warnings are noise for users.
            warnings.simplefilter('ignore')
            torch.onnx.export(wrapper, (dummy,), tmp, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), opset_version=opset,
                              dynamic_axes=dynamic_axes, do_constant_folding=True,
                              dynamo=False)
        return onnx.load(tmp)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the ``metadata_props`` of an ONNX file, JSON values decoded."""
    import onnx

    proto = onnx.load(str(_existing(path)), load_external_data=False)
    out: dict[str, Any] = {}
    for entry in proto.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            out[entry.key] = entry.value
    return out


def graph_postprocess(path: str | os.PathLike) -> str:
    """
    Return the post-processing mode an ONNX file was exported with.

    Files written before the modes existed carry no ``postprocess`` entry and computed
    what ``'full'`` computes. An unknown name raises ValueError: a graph whose outputs
    nobody here can reproduce must not be checked against the wrong reference.
    """
    return check_postprocess(str(read_metadata(path).get('postprocess', 'full')))


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(_existing(path), 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_structure_digest(model: Any) -> str:
    """
    Return a sha256 of the graph *without* initializer values (nor metadata).

    Initializer names, shapes and types, every node with its attributes, the inputs,
    outputs and opsets all count; only the numbers stored in initializers do not. Two
    exports with the same digest differ in weights alone, which is exactly the case a
    TensorRT refit can handle. Constant *nodes* keep their values: the refitter only
    sees initializers, so a change there must trigger a rebuild.
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        proto = onnx.load(str(_existing(model)), load_external_data=False)
    else:
        proto = copy.deepcopy(model)
    for init in proto.graph.initializer:
        for name in ('raw_data', 'float_data', 'int32_data', 'int64_data', 'double_data',
                     'uint64_data', 'string_data'):
            init.ClearField(name)
        del init.external_data[:]
        init.ClearField('data_location')
    del proto.metadata_props[:]
    proto.ClearField('producer_version')
    proto.ClearField('doc_string')
    proto.graph.ClearField('doc_string')
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def check_parity(model: nn.Module, onnx_path: str | os.PathLike,
                 images: Iterable[np.ndarray] | np.ndarray,
                 providers: Sequence[str] | str = 'cpu',
                 min_agreement: float = MIN_ARGMAX_AGREEMENT) -> ParityReport:
    """
    Run ``model`` (eager torch) and the ONNX file on the same real images and compare.

    ``images``: uint8 RGB frames of any size (resized to the graph's input size) or a
    uint8 ``(B, H, W, 3)`` array. Returns argmax agreement over all pixels and the largest
    absolute margin/confidence differences; ``report.passed`` says whether the agreement
    reaches ``min_agreement`` (99.9% by default). The torch side runs the post-processing
    the graph's metadata names (``'full'`` for files exported before the modes existed),
    so the check compares like with like.
    """
    from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ldka_ros.inference.backends.torch_backend import TorchBackend

    frames = [np.asarray(img) for img in images]
    if not frames:
        raise ValueError('check_parity needs at least one image')
    ort_backend = OnnxRuntimeBackend(onnx_path, providers=providers).load()
    try:
        hw = ort_backend.input_hw
        mode = graph_postprocess(onnx_path)
        torch_backend = TorchBackend(model, device='cpu', input_hw=hw,
                                     postprocess=mode).load()
        agree = total = 0
        d_margin = d_conf = 0.0
        for frame in frames:
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f'parity images must be uint8 (H, W, 3) RGB, got '
                                 f'{frame.dtype} {frame.shape}')
            batch = resize_image(frame, hw)[None]
            ref = torch_backend.infer(batch)
            got = ort_backend.infer(batch)
            agree += int(np.count_nonzero(ref.class_ids == got.class_ids))
            total += ref.class_ids.size
            d_margin = max(d_margin, float(np.abs(ref.margin - got.margin).max()))
            d_conf = max(d_conf, float(np.abs(ref.confidence - got.confidence).max()))
        used = ort_backend.describe()['providers']
    finally:
        ort_backend.release()
    return ParityReport(argmax_agreement=agree / total, max_abs_diff_margin=d_margin,
                        max_abs_diff_confidence=d_conf, num_images=len(frames),
                        num_pixels=total, min_agreement=min_agreement, providers=used,
                        postprocess=mode)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'ONNX file {path} does not exist')
    return path


def _check_hw(hw: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise ValueError(f'input size must be (H, W), got {hw!r}') from None
    if h < 32 or w < 32:
        raise ValueError(f'input size {hw!r} too small: H and W must be >= 32')
    return h, w
