# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Every ``torch.load`` of the package refuses a pickle that would run code.

Each file below is a real ``torch.save`` of the structure its reader expects, with one
value replaced by an object whose unpickling calls a function that creates a marker
file. A full unpickle (``weights_only=False``) creates the marker (checked first, so the
test has teeth); the package's readers must refuse the file and the marker must never
appear. A static check makes sure no load site is added without ``weights_only=True``.
"""
import ast
from pathlib import Path
import pickle
from types import SimpleNamespace

from ldka_ros.app import job
from ldka_ros.errors import UserError
from ldka_ros.learning import checkpoint, pretrained, steps
import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / 'ldka_ros'


def plant_marker(path: str) -> str:
    """Create ``path``: what a malicious pickle would do instead (run a program, ...)."""
    Path(path).write_text('code ran during unpickling\n')
    return 'planted'


class Planted:
    """Unpickles by calling :func:`plant_marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return plant_marker, (self.marker,)


def _payloads(marker: Path) -> dict[str, object]:
    """Return, per reader, a file content it would otherwise accept, carrying the payload."""
    tensor = torch.zeros(2)
    return {
        'train_state': {'format': steps.STATE_FORMAT, 'key': {'phase': 'step'},
                        'iteration': 3, 'model': {'w': tensor}, 'optimizer': {},
                        'scaler': {}, 'loss': {}, 'torch_rng': torch.get_rng_state(),
                        'history': [Planted(marker)], 'seconds': 1.0, 'done': False},
        'checkpoint': {'format': checkpoint.CHECKPOINT_FORMAT, 'model_config': {},
                       'state_dict': {'w': tensor}, 'classes': {},
                       'meta': {'note': Planted(marker)}},
        'feature_bank': {'num_slots': 2, 'dim': 2, 'shrinkage': 0.1, 'floor': 1e-3,
                         'count': Planted(marker), 'sum': tensor},
        'backbone_weights': {'state_dict': {'conv.weight': tensor, 'extra': Planted(marker)}},
    }


def _read_train_state(path: Path):
    return steps.read_train_state(path)


def _resume_train_state(path: Path):
    return steps._load_state(path, {'phase': 'step'})


def _read_checkpoint(path: Path):
    return checkpoint.read_checkpoint(path)


def _load_checkpoint(path: Path):
    return checkpoint.load_checkpoint(path)


def _job_feature_bank(path: Path):
    registry = SimpleNamespace(artefact_path=lambda version, kind, verify: path)
    return job._load_feature_bank(registry, SimpleNamespace(id='v0001'), [])


def _backbone_weights(path: Path):
    return pretrained._read_state_dict(path)


#: (file kind, reader, the error the reader refuses it with)
READERS = [('train_state', _read_train_state, UserError),
           ('train_state', _resume_train_state, UserError),
           ('checkpoint', _read_checkpoint, ValueError),
           ('checkpoint', _load_checkpoint, ValueError),
           ('feature_bank', _job_feature_bank, pickle.UnpicklingError),
           ('backbone_weights', _backbone_weights, ValueError)]


@pytest.mark.parametrize('kind,reader,error', READERS,
                         ids=[r[1].__name__[1:] for r in READERS])
def test_code_carrying_pickle_is_refused_unexecuted(tmp_path, kind, reader, error):
    marker = tmp_path / 'marker'
    path = tmp_path / f'{kind}.pt'
    torch.save(_payloads(marker)[kind], path)

    torch.load(path, weights_only=False)  # the payload is real: a full unpickle runs it
    assert marker.is_file()
    marker.unlink()

    with pytest.raises(error, match='Weights only load failed'):
        reader(path)
    assert not marker.exists(), f'{reader.__name__} ran code from {path}'


def test_train_state_refusal_is_a_user_error_that_says_what_to_do(tmp_path):
    path = tmp_path / 'train_state.pt'
    torch.save(_payloads(tmp_path / 'marker')['train_state'], path)
    with pytest.raises(UserError, match='delete it or pass resume=False'):
        steps.read_train_state(path)
    assert not (tmp_path / 'marker').exists()


def test_every_torch_load_in_the_package_is_weights_only():
    sites = []
    for source in sorted(PACKAGE.rglob('*.py')):
        for node in ast.walk(ast.parse(source.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == 'load' and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == 'torch':
                flag = {k.arg: k.value for k in node.keywords}.get('weights_only')
                safe = isinstance(flag, ast.Constant) and flag.value is True
                sites.append((f'{source.relative_to(PACKAGE.parent)}:{node.lineno}', safe))
    assert len(sites) >= 4, sites  # the readers tested above
    assert [site for site, safe in sites if not safe] == []
