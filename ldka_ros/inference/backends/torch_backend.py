# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Eager PyTorch backend: the reference every other backend is compared with.

Why keep it although it is the slowest: it needs no export, so it runs a model the
moment a learning step ends (before ONNX/TensorRT artefacts exist), it is the last
fallback when no other runtime works, and the probe in ``select.py`` uses it as ground
truth. It runs the very same ``ExportWrapper`` (uint8 NHWC in, argmax/confidence/margin
out) that ``export.py`` traces, so its outputs match the graph by construction.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from ldka_ros.inference.backends.base import Backend, InferenceResult
from ldka_ros.inference.export import (check_postprocess, DEFAULT_INPUT_HW,
                                       DEFAULT_POSTPROCESS, ExportWrapper)
import numpy as np
import torch
from torch import nn


def load_model(checkpoint: str | os.PathLike) -> nn.Module:
    """
    Build a :class:`SegModel` from a checkpoint file (``learning.checkpoint``), eval mode.

    FileNotFoundError / ValueError / RuntimeError with the reason for a bad file.
    """
    from ldka_ros.learning.checkpoint import load_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    model, _classes, _meta = load_checkpoint(path)
    return model.eval()


class TorchBackend(Backend):
    """
    Run a :class:`SegModel` eagerly (CUDA when available) with the graph's post-processing.

    ``model``: a module or a checkpoint path. The module is copied on ``load`` so that a
    learner that keeps training the original cannot change what this backend serves.
    ``precision``: ``'fp32'`` or ``'fp16'`` (autocast, CUDA only). ``postprocess``: the
    export's post-processing mode (``export.POSTPROCESS_MODES``), so that this backend
    computes what a graph exported with the same mode computes.
    """

    name = 'torch'

    def __init__(self, model: nn.Module | str | os.PathLike, device: str = 'auto',
                 input_hw: tuple[int, int] = DEFAULT_INPUT_HW, precision: str = 'fp32',
                 copy_model: bool = True, postprocess: str = DEFAULT_POSTPROCESS) -> None:
        super().__init__(input_hw)
        self._postprocess = check_postprocess(postprocess)
        if precision not in ('fp32', 'fp16'):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        self._source = model
        from ldka_ros.learning.steps import resolve_device

        self._device = resolve_device(device)
        if precision == 'fp16' and self._device.type != 'cuda':
            raise ValueError('fp16 eager inference needs a CUDA device')
        self._precision = precision
        self._copy = copy_model
        self._wrapper: ExportWrapper | None = None

    def _load(self) -> None:
        if isinstance(self._source, nn.Module):
            model = copy.deepcopy(self._source) if self._copy else self._source
        else:
            model = load_model(self._source)
        self._wrapper = ExportWrapper(model, self._postprocess).to(self._device).eval()

    def _infer(self, batch: np.ndarray) -> InferenceResult:
        assert self._wrapper is not None
        image = torch.from_numpy(batch).to(self._device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self._device.type, torch.float16,
                                                    enabled=self._precision == 'fp16'):
            class_ids, confidence, margin = self._wrapper(image)
        return InferenceResult(class_ids.cpu().numpy(), confidence.float().cpu().numpy(),
                               margin.float().cpu().numpy())

    def _release(self) -> None:
        self._wrapper = None
        if self._device.type == 'cuda':
            torch.cuda.empty_cache()

    def _describe(self) -> dict:
        device = str(self._device)
        if self._device.type == 'cuda':
            device = f'{device} ({torch.cuda.get_device_name(self._device)})'
        artefact = (f'{type(self._source).__name__} (in memory)'
                    if isinstance(self._source, nn.Module) else str(self._source))
        return {'device': device, 'providers': [f'torch-{self._device.type}'],
                'precision': self._precision, 'artefact': artefact,
                'postprocess': self._postprocess,
                'torch_version': torch.__version__, 'threads': torch.get_num_threads()}
