"""
Checkpoints: one ``.pt`` file holding everything needed to rebuild a trained model.

Format (docs/ARCHITECTURE.md): ``{'format': 'ldka_ros.checkpoint/1', 'model_config':
dict, 'state_dict': ..., 'classes': ClassRegistry.to_dict(), 'meta': dict}``.

Why this shape: a learner step runs in a separate process and may be killed at any
time (the robot powers down, the operator cancels), so a checkpoint is written to a
temporary file, fsynced and renamed: readers see the old file or the whole new one.
Loading rebuilds the network from its config with ``pretrained=None`` (no weight file
or network needed: the state dict has every weight) and reads with
``weights_only=True``, so a checkpoint can never run code.
"""
from __future__ import annotations

import os
from pathlib import Path

from ldka_ros.errors import UserError
from ldka_ros.fsio import atomic_writer
from ldka_ros.learning.classes import ClassRegistry
from ldka_ros.learning.model import build_model, ModelConfig, SegModel
import torch

CHECKPOINT_FORMAT = 'ldka_ros.checkpoint/1'
_SAFE_SCALARS = (str, int, float, bool, type(None))


def _check_meta(value, where: str = 'meta') -> None:
    """Raise ValueError unless ``value`` only holds types ``weights_only`` loading accepts."""
    if isinstance(value, _SAFE_SCALARS) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f'{where}: key {key!r} must be a str or int')
            _check_meta(item, f'{where}[{key!r}]')
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_meta(item, f'{where}[{i}]')
        return
    raise ValueError(f'{where} is a {type(value).__name__}; checkpoint meta may only hold '
                     'dicts, lists, tuples, str, int, float, bool, None and tensors '
                     '(convert numpy values with .tolist())')


def save_checkpoint(path: str | os.PathLike, model: SegModel, classes: ClassRegistry,
                    meta: dict | None = None) -> Path:
    """
    Write ``model`` + ``classes`` + ``meta`` to ``path`` atomically; return the path.

    Tensors are stored on the CPU so a checkpoint made on a GPU loads anywhere.
    ValueError for meta that could not be read back safely.
    """
    meta = dict(meta or {})
    _check_meta(meta)
    if not isinstance(classes, ClassRegistry):
        raise ValueError(f'classes must be a ClassRegistry, got {type(classes).__name__}')
    if classes.num_slots != model.num_slots:
        raise ValueError(f'class registry has {classes.num_slots} slots but the model '
                         f'{model.num_slots}')
    payload = {
        'format': CHECKPOINT_FORMAT,
        'model_config': model.config.to_dict(),
        'state_dict': {k: v.detach().cpu() for k, v in model.state_dict().items()},
        'classes': classes.to_dict(),
        'meta': meta,
    }
    path = Path(path)
    with atomic_writer(path) as handle:
        torch.save(payload, handle)
    return path


def read_checkpoint(path: str | os.PathLike, map_location='cpu') -> dict:
    """Return the raw, validated checkpoint dict without building a model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: B902 - torch raises many types for bad files
        raise ValueError(f'checkpoint {path} is corrupt or not a checkpoint '
                         f'({type(exc).__name__}: {str(exc)[:200]})') from exc
    if not isinstance(data, dict) or data.get('format') != CHECKPOINT_FORMAT:
        found = data.get('format') if isinstance(data, dict) else type(data).__name__
        raise ValueError(f'{path} is not an ldka_ros checkpoint: expected format '
                         f'{CHECKPOINT_FORMAT!r}, found {found!r}')
    missing = [k for k in ('model_config', 'state_dict', 'classes', 'meta') if k not in data]
    if missing:
        raise ValueError(f'checkpoint {path} lacks {missing}')
    return data


def load_checkpoint(path: str | os.PathLike, map_location='cpu'
                    ) -> tuple[SegModel, ClassRegistry, dict]:
    """
    Rebuild ``(model, classes, meta)`` from a checkpoint; the model is in eval mode.

    The model is rebuilt with ``pretrained=None`` and moved to ``map_location`` when it
    names a device. ValueError/FileNotFoundError/RuntimeError with the reason otherwise.
    """
    data = read_checkpoint(path, map_location)
    try:
        config = ModelConfig.from_dict(data['model_config'])
    except TypeError as exc:
        raise ValueError(f'checkpoint {path}: model config does not fit this version '
                         f'of ModelConfig ({exc})') from exc
    config.pretrained = None
    model = build_model(config)
    try:
        model.load_state_dict(data['state_dict'], strict=True)
    except RuntimeError as exc:
        raise UserError(f'checkpoint {path}: weights do not fit the model built from '
                        f'its config: {str(exc)[:500]}') from exc
    classes = ClassRegistry.from_dict(data['classes'])
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    return model, classes, data['meta']
