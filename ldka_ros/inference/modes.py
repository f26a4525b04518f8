# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Names of the exported graph's post-processing modes, torch-free.

Why apart from ``export.py``: the ``ldka`` command lists the modes in its help and the
serving side reads them from a graph's metadata; neither should import torch for that.

``'full'``: all slot logits upsampled (bilinear) to the input size, then top-2 per
pixel. ``'decoder-x4'`` / ``'decoder-x2'``: logits upsampled to four / two times the
decoder's resolution, top-2 there, then class ids brought to the input size by nearest
neighbour and confidence / margin bilinearly. ``'decoder'``: the same at the decoder's
resolution. The output shapes are the same in every mode (``(1, H, W)`` at the input
size).
"""
from __future__ import annotations

POSTPROCESS_MODES = ('full', 'decoder-x4', 'decoder-x2', 'decoder')
#: Chosen by class-id agreement with ``'full'``, mIoU and latency on real CamVid frames
#: (docs/benchmarks/inference_latency.md).
DEFAULT_POSTPROCESS = 'decoder-x4'


def check_postprocess(mode: str) -> str:
    """Return ``mode`` if it names a post-processing mode, else raise ValueError."""
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f'postprocess must be one of {POSTPROCESS_MODES}, got {mode!r}')
    return mode
