"""
The demo's base model: rendered tabletop frames -> ``train_base`` -> registry version v0001.

Why the demo trains its own base model instead of shipping weights: the scene, the class
ids and the model must agree exactly (the simulator's ground truth is what the demo
scores against), and a model trained by the project's own ``train_base`` on the
project's own renderer shows the whole pipeline, not a file of unknown origin. The
object to be taught later (the duck) is on the table in every training frame but is
labelled background, as in class-incremental segmentation on a real robot: the old
model has seen the new object before and learnt to call it background.

Building takes minutes on a laptop CPU, so the result is cached under
``$LDKA_CACHE/demo/<key>`` (default ``~/.cache/ldka_ros/demo/<key>``), where ``key`` is
a hash of the configuration and of the source files that shape the result. The cache
entry is assembled in a hidden sibling folder and renamed into place, so an interrupted
build never leaves a half-made entry; a lock file keeps two concurrent builds of the same
key from doing the work twice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import tempfile
import time
from typing import Callable

from ldka_ros.fsio import atomic_write_json

LOG = logging.getLogger(__name__)

ENTRY_FORMAT = 'ldka_ros.demo_base/1'
INFO_NAME = 'base_model.json'
#: Sources that define the scene and the network; part of the cache key (a cached model
#: whose scene or architecture changed would be wrong, not just different). Changes to
#: how the entry is built bump ENTRY_FORMAT instead.
SHAPING_SOURCES = ('sim/tabletop.py', 'sim/dataset.py', 'learning/model.py')
#: The ``ldka_ros`` package folder that ``SHAPING_SOURCES`` are relative to.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
Echo = Callable[[str], None]


@dataclass(frozen=True)
class BaseModelConfig:
    """
    Scene, rendering and training settings of the demo's base model.

    ``objects`` are on the table in this order and get class ids 1, 2, ...;
    ``new_object`` (the one the demo teaches) stays in the scene but is labelled
    background in the training frames. ``render_hw`` is the camera size (H, W) and
    ``input_hw`` the model's graph input size. The defaults train in a few minutes on
    a 2-core CPU (see docs/demo.md).
    """

    objects: tuple[str, ...] = ('tray', 'teddy', 'soccerball', 'jenga', 'mug', 'duck')
    new_object: str = 'duck'
    render_hw: tuple[int, int] = (240, 320)
    input_hw: tuple[int, int] = (144, 192)
    train_frames: int = 120
    val_frames: int = 24
    render_seed: int = 101
    val_seed: int = 202
    frames_per_layout: int = 4
    backbone: str = 'efficientnet_lite0'
    num_slots: int = 16
    decoder_channels: int = 48
    iterations: int = 240
    batch_size: int = 6
    crop: tuple[int, int] = (128, 176)
    lr: float = 0.02
    #: Square-root class balancing of the CE (``TrainConfig.class_balance``): the objects
    #: cover a few percent of a frame each, the table and floor the rest.
    class_balance: float = 0.5
    #: Train the decoder only (ImageNet backbone kept as it is): about 3x faster on a CPU.
    freeze_backbone: bool = False
    #: Also store the Gaussian feature bank (only the ``ldka+gfr`` method needs it).
    feature_bank: bool = False
    seed: int = 0
    #: Free-form tag, e.g. 'test', so that differently used entries never collide.
    tag: str = ''
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        objects = tuple(str(o) for o in self.objects)
        object.__setattr__(self, 'objects', objects)
        for name in ('render_hw', 'input_hw', 'crop'):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2 or min(value) < 32:
                raise ValueError(f'{name} must be (H, W) with H, W >= 32, got {value}')
            object.__setattr__(self, name, value)
        if len(set(objects)) != len(objects) or len(objects) < 2:
            raise ValueError(f'objects must be at least two distinct names, got {objects}')
        if self.new_object not in objects:
            raise ValueError(f'new_object {self.new_object!r} must be one of the objects '
                             f'{objects}')
        if len(objects) >= self.num_slots:
            raise ValueError(f'{len(objects)} objects need more than num_slots='
                             f'{self.num_slots} class slots')
        for name in ('train_frames', 'val_frames', 'iterations', 'batch_size',
                     'frames_per_layout'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        from ldka_ros.sim.tabletop import object_spec

        for name in objects:
            object_spec(name)

    # -- class ids ---------------------------------------------------------------------
    def class_ids(self) -> dict[str, int]:
        """
        Return object name -> class id for the simulator and the model.

        The base classes get 1..N in order and the new object the next id, which is the
        lowest free slot after the base classes, i.e. the id the learner allocates when
        the operator labels it.
        """
        base = [o for o in self.objects if o != self.new_object]
        ids = {name: i + 1 for i, name in enumerate(base)}
        ids[self.new_object] = len(base) + 1
        return ids

    def base_classes(self) -> dict[int, str]:
        """Return class id -> name of the classes the base model knows (background excluded)."""
        return {cid: name for name, cid in self.class_ids().items() if name != self.new_object}

    def sim_class_map(self) -> str:
        """Return the sim camera's ``class_map`` parameter (``'tray:1,...'``)."""
        return ','.join(f'{n}:{c}' for n, c in self.class_ids().items())

    # -- cache key ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Return the config as JSON-ready data."""
        data = asdict(self)
        for name in ('objects', 'render_hw', 'input_hw', 'crop'):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> 'BaseModelConfig':
        """Rebuild a config from ``to_dict`` output; ValueError for unknown fields."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown base model settings {unknown}; known: {sorted(known)}')
        data = dict(data)
        for name in ('objects', 'render_hw', 'input_hw', 'crop'):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    def with_(self, **changes) -> 'BaseModelConfig':
        """Return a copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def key(self) -> str:
        """Return the cache key: a hash of this config and the sources that shape it."""
        digest = hashlib.sha256(ENTRY_FORMAT.encode())
        digest.update(json.dumps(self.to_dict(), sort_keys=True).encode())
        for rel in SHAPING_SOURCES:
            path = PACKAGE_ROOT / rel
            digest.update(rel.encode())
            digest.update(path.read_bytes() if path.is_file() else b'<missing>')
        return digest.hexdigest()[:16]


def default_cache_root() -> Path:
    """Return ``$LDKA_CACHE/demo`` or ``~/.cache/ldka_ros/demo``."""
    root = os.environ.get('LDKA_CACHE')
    base = Path(root).expanduser() if root else Path.home() / '.cache' / 'ldka_ros'
    return base / 'demo'


@dataclass
class BaseModel:
    """A cached base model: its folder, its registry (v0001 active) and what was measured."""

    path: Path
    config: BaseModelConfig
    info: dict
    reused: bool

    @property
    def registry_path(self) -> Path:
        """Return the registry folder inside the cache entry (never modify it in place)."""
        return self.path / 'registry'

    @property
    def version_id(self) -> str:
        """Return the published version id (``v0001``)."""
        return str(self.info['version_id'])


def _render(cfg: BaseModelConfig, out: Path, frames: int, seed: int, progress: bool) -> Path:
    from ldka_ros.sim.dataset import render_dataset

    h, w = cfg.render_hw
    return render_dataset(out, frames, cfg.class_ids(), seed=seed, exclude=(cfg.new_object,),
                          width=w, height=h, frames_per_layout=cfg.frames_per_layout,
                          overwrite=True, progress=progress)


class _ProgressPrinter:
    """Print a training progress line every ``every`` iterations (tqdm in a terminal)."""

    def __init__(self, echo: Echo, every: int, use_tqdm: bool) -> None:
        self.echo, self.every, self.bar = echo, max(1, every), None
        self.use_tqdm = use_tqdm

    def __call__(self, event) -> None:
        if self.use_tqdm:
            from tqdm import tqdm

            if self.bar is None or self.bar.desc != event.phase:
                self.close()
                self.bar = tqdm(total=event.total, desc=event.phase, unit='it', leave=False,
                                dynamic_ncols=True)
            self.bar.n = event.iteration
            if event.losses:
                self.bar.set_postfix({k: f'{v:.3f}' for k, v in event.losses.items()},
                                     refresh=False)
            self.bar.refresh()
            return
        if event.phase == 'features' and event.iteration != event.total:
            return
        if event.iteration % self.every == 0 or event.iteration == event.total:
            losses = ' '.join(f'{k} {v:.3f}' for k, v in event.losses.items())
            self.echo(f'  {event.phase} {event.iteration}/{event.total} {losses} '
                      f'({event.seconds:.0f} s, eta {event.eta_seconds:.0f} s)')

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def quick_base_changes() -> dict:
    """Return the base-model settings of ``--quick`` (small images, few iterations)."""
    return {'render_hw': (120, 160), 'input_hw': (96, 128), 'crop': (96, 128),
            'train_frames': 48, 'val_frames': 8, 'iterations': 60, 'batch_size': 6,
            'decoder_channels': 32, 'freeze_backbone': False, 'lr': 0.03}


def build_base_model(cfg: BaseModelConfig, out: Path, echo: Echo = print,
                     progress: bool = False, device: str = 'auto') -> dict:
    """
    Render, train, evaluate, export and publish the base model into ``out``; return info.

    ``out`` gets ``dataset/`` (training frames), ``registry/`` (v0001, active, with
    checkpoint and ONNX graph) and ``base_model.json`` (config, timings, held-out
    mIoU). ``out`` must be new or empty; callers assemble into a temporary folder.
    """
    import torch

    from ldka_ros.learning.steps import resolve_device

    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    echo(f'rendering {cfg.train_frames} training and {cfg.val_frames} held-out frames '
         f'({cfg.render_hw[1]}x{cfg.render_hw[0]}, {cfg.new_object} labelled background)')
    train_dir = _render(cfg, out / 'dataset', cfg.train_frames, cfg.render_seed, progress)
    val_dir = _render(cfg, out / 'val', cfg.val_frames, cfg.val_seed, progress)
    timings['render_s'] = time.perf_counter() - t0
    result = _train(cfg, train_dir, out, device, echo, progress, timings)
    t2 = time.perf_counter()
    ev, per_class, val = _evaluate(cfg, result.model, val_dir, echo)
    timings['evaluate_s'] = time.perf_counter() - t2
    t3 = time.perf_counter()
    metrics = {'miou_old': ev.miou_all, 'per_class_iou': {k: (v if v == v else None)
                                                          for k, v in per_class.items()}}
    manifest, exported, parity = _publish(cfg, out, result, val, metrics)
    shutil.rmtree(val_dir)
    timings['export_publish_s'] = time.perf_counter() - t3
    timings['total_s'] = time.perf_counter() - t0
    names = {0: 'background', **cfg.base_classes()}
    info = {
        'format': ENTRY_FORMAT, 'key': cfg.key(), 'config': cfg.to_dict(),
        'version_id': manifest.id, 'classes': {str(k): v for k, v in names.items()},
        'class_ids': cfg.class_ids(), 'device': resolve_device(device).type,
        'torch_threads': torch.get_num_threads(),
        'train': {'iterations': cfg.iterations, 'seconds': result.seconds,
                  'seconds_per_iter': result.seconds_per_iter,
                  'final_loss': result.history[-1].get('total') if result.history else None},
        'heldout': {'frames': len(val), 'miou': ev.miou_all, 'per_class_iou': metrics[
            'per_class_iou'], 'pixel_accuracy': ev.pixel_accuracy},
        'onnx': {'sha256': exported.sha256, 'size_bytes': exported.size_bytes,
                 'parity_argmax_agreement': parity.argmax_agreement},
        'timings': {k: round(v, 2) for k, v in timings.items()},
        'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }
    atomic_write_json(out / INFO_NAME, info)
    return info


def _model_config(cfg: BaseModelConfig, echo: Echo):
    """Return the model config: offline ImageNet weights where installed, else random."""
    from ldka_ros.learning.model import ModelConfig
    from ldka_ros.learning.pretrained import find_local_weights, LOCAL_WEIGHTS_NORMALIZATION

    weights = find_local_weights(cfg.backbone)
    mcfg = ModelConfig(backbone=cfg.backbone, num_slots=cfg.num_slots,
                       decoder_channels=cfg.decoder_channels,
                       pretrained='local' if weights else None)
    if weights:
        mcfg.mean, mcfg.std = LOCAL_WEIGHTS_NORMALIZATION
    else:
        echo(f'warning: no offline ImageNet weights for {cfg.backbone}; training from '
             'random initialisation (install requirements/ml.txt for better results)')
    return mcfg


def _train(cfg: BaseModelConfig, train_dir: Path, out: Path, device: str, echo: Echo,
           progress: bool, timings: dict[str, float]):
    """Train the base step on the rendered frames; return ``steps.train_base``'s result."""
    import torch

    from ldka_ros.learning.data import FolderDataset, Resize
    from ldka_ros.learning.model import build_model
    from ldka_ros.learning.steps import resolve_device, TrainConfig, train_base

    mcfg = _model_config(cfg, echo)
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg)
    train = FolderDataset(train_dir, transform=Resize(cfg.input_hw))
    tcfg = TrainConfig(iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr,
                       crop=cfg.crop, device=device, seed=cfg.seed,
                       freeze_backbone=cfg.freeze_backbone, class_balance=cfg.class_balance)
    echo(f'training the base model ({cfg.backbone}, {cfg.iterations} iterations, batch '
         f'{cfg.batch_size}, crop {cfg.crop[0]}x{cfg.crop[1]}) on '
         f'{resolve_device(device).type}')
    printer = _ProgressPrinter(echo, max(1, cfg.iterations // 10), progress)
    t1, cpu1 = time.perf_counter(), time.process_time()
    try:
        result = train_base(model, train, sorted(cfg.base_classes()), tcfg, progress=printer,
                            checkpoint_path=out / 'train_state.pt',
                            collect_features=cfg.feature_bank)
    finally:
        printer.close()
    timings['train_s'] = time.perf_counter() - t1
    # CPU seconds of this process (all threads): unlike wall time, barely affected by
    # other jobs sharing the machine, so runs on busy and idle machines compare.
    timings['train_cpu_s'] = time.process_time() - cpu1
    (out / 'train_state.pt').unlink(missing_ok=True)
    return result


def _evaluate(cfg: BaseModelConfig, trained, val_dir: Path, echo: Echo):
    """Return ``(EvalResult, name -> IoU, held-out dataset)`` of the trained model."""
    from ldka_ros.learning.data import FolderDataset, Resize
    from ldka_ros.learning.evaluate import evaluate

    base_ids = sorted(cfg.base_classes())
    val = FolderDataset(val_dir, transform=Resize(cfg.input_hw))
    ev = evaluate(trained, val, [0, *base_ids], [0, *base_ids], [], batch_size=4)
    names = {0: 'background', **cfg.base_classes()}
    per_class = {names[c]: v for c, v in ev.per_class_iou.items()}
    echo(f'held-out mIoU of the base model: {100 * ev.miou_all:.1f} ('
         + ', '.join(f'{n} {100 * v:.0f}' for n, v in per_class.items() if v == v) + ')')
    return ev, per_class, val


def _publish(cfg: BaseModelConfig, out: Path, result, val, metrics: dict):
    """Export, parity-check and publish the model as ``v0001``; return what was made."""
    import torch

    from ldka_ros.inference.export import check_parity, export_onnx
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.classes import ClassRegistry
    from ldka_ros.registry import ModelRegistry

    trained = result.model
    classes = ClassRegistry(cfg.num_slots)
    for cid, name in sorted(cfg.base_classes().items()):
        info = classes.add(name, step=0)
        if info.id != cid:  # pragma: no cover - ids are 1..N by construction
            raise RuntimeError(f'class {name} got id {info.id}, expected {cid}')
    work = out / 'work'
    work.mkdir(exist_ok=True)
    ckpt = save_checkpoint(work / 'checkpoint.pt', trained, classes, meta={
        'step': 0, 'method': 'base', 'source': 'ldka_ros.app.demo.base_model',
        'input_hw': list(cfg.input_hw), 'seconds': result.seconds})
    artefacts = {'checkpoint': ckpt}
    if result.feature_bank is not None:
        torch.save(result.feature_bank.state_dict(), work / 'feature_bank.pt')
        artefacts['feature_bank'] = work / 'feature_bank.pt'
    onnx_path = work / 'model.onnx'
    exported = export_onnx(trained, onnx_path, cfg.input_hw, metadata={'step': 0,
                                                                       'method': 'base'})
    artefacts['onnx'] = onnx_path
    val_images = [val.load_raw(i)[0] for i in range(min(4, len(val)))]
    parity = check_parity(trained, onnx_path, val_images, providers='cpu')
    if not parity.passed:
        raise RuntimeError(f'the exported base model disagrees with torch: argmax agreement '
                           f'{parity.argmax_agreement:.4%}')
    registry = ModelRegistry(out / 'registry', create=True)
    manifest = registry.publish(artefacts, [c.to_dict() for c in classes], parent=None,
                                step=0, metrics=metrics, activate=True,
                                extra={'input_hw': list(cfg.input_hw), 'method': 'base',
                                       'source': 'ldka_ros.app.demo.base_model',
                                       'train_frames': cfg.train_frames})
    shutil.rmtree(work)
    return manifest, exported, parity


def load_entry(path: Path, cfg: BaseModelConfig) -> BaseModel | None:
    """Return the cache entry at ``path`` if it is complete and matches ``cfg``, else None."""
    info_path = path / INFO_NAME
    if not info_path.is_file() or not (path / 'registry' / 'ACTIVE').is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    if info.get('format') != ENTRY_FORMAT or info.get('key') != cfg.key():
        return None
    return BaseModel(path, cfg, info, reused=True)


def ensure_base_model(cfg: BaseModelConfig | None = None, cache_root: str | os.PathLike |
                      None = None, rebuild: bool = False, echo: Echo = print,
                      progress: bool = False, device: str = 'auto') -> BaseModel:
    """
    Return the cached base model for ``cfg``, building it first if needed.

    Concurrent callers with the same key wait on a lock file instead of building twice.
    ``rebuild`` throws an existing entry away first.
    """
    cfg = cfg or BaseModelConfig()
    root = Path(cache_root).expanduser() if cache_root else default_cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f'cannot create the demo cache folder {root}: {exc}; set '
                           'LDKA_CACHE to a writable folder') from exc
    key = cfg.key()
    entry = root / key
    with open(root / f'.{key}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rebuild and entry.exists():
            shutil.rmtree(entry)
        found = load_entry(entry, cfg)
        if found is not None:
            echo(f'base model: reusing {entry} ({found.version_id}, trained in '
                 f'{found.info["timings"]["train_s"]:.0f} s)')
            return found
        if entry.exists():  # incomplete or from other sources: replace it
            shutil.rmtree(entry)
        echo(f'base model: building {entry} (cached for later runs)')
        tmp = Path(tempfile.mkdtemp(prefix=f'.build-{key}-', dir=root))
        try:
            info = build_base_model(cfg, tmp, echo, progress, device)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        echo(f'base model: {info["version_id"]} ready in {info["timings"]["total_s"]:.0f} s '
             f'(training {info["timings"]["train_s"]:.0f} s)')
        return BaseModel(entry, cfg, info, reused=False)


def copy_registry(base: BaseModel, dest: str | os.PathLike) -> Path:
    """
    Copy the base model's registry to ``dest`` (replacing it) and return ``dest``.

    Why a copy: a demo run publishes new versions into its registry; the cached base
    registry must stay at v0001 so that every run starts from the same model.
    """
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f'.{dest.name}.copy-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base.registry_path, tmp, ignore=shutil.ignore_patterns('.lock', '.tmp-*'))
    os.replace(tmp, dest)
    return dest
