# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``ldka export | quantize | bench-inference | probe-backends``: the inference side from a shell.

Sizes are HEIGHTxWIDTH everywhere (as in the other ``ldka`` commands and ``input_hw``
in the API): ``240x320`` is a 320-pixel-wide, 240-pixel-high frame.

``export`` writes the ONNX file only after the parity check on real images passed (the
candidate is exported next to the target and renamed into place), so a failed check
never replaces a good model.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ldka_ros.errors import UserError
from ldka_ros.inference.modes import DEFAULT_POSTPROCESS, POSTPROCESS_MODES
import numpy as np

IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


DEFAULT_BENCH_BACKENDS = 'torch@full,torch,onnxruntime@full,onnxruntime'


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected HEIGHTxWIDTH like 240x320, got {text!r}'
                                         ) from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f'size {text} is too small (min 32x32)')
    return h, w


def _sizes(text: str) -> list[tuple[int, int]]:
    return [_size(part) for part in text.split(',') if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(',') if part.strip()]


def _write_json(path: str, obj: dict) -> None:
    from ldka_ros.fsio import atomic_write_json

    atomic_write_json(path, obj)
    print(f'wrote {path}')


def find_images(folder: str | os.PathLike, limit: int) -> list[Path]:
    """Return up to ``limit`` image files of ``folder`` (or of its ``images/``), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f'image folder {root} does not exist')
    if (root / 'images').is_dir():
        root = root / 'images'
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f'no .jpg/.png images in {root}')
    return files[:limit]


def cmd_export(args) -> int:
    from ldka_ros.inference.export import check_parity, export_onnx, file_sha256
    from ldka_ros.learning.checkpoint import load_checkpoint
    from ldka_ros.learning.data import read_rgb

    out = Path(args.out)
    if out.suffix != '.onnx':
        raise ValueError(f'--out must end in .onnx, got {out}')
    model, classes, meta = load_checkpoint(args.checkpoint)
    images = []
    if args.check_images:
        images = [read_rgb(p) for p in find_images(args.check_images, args.check_count)]
    extra = {'classes': {str(c.id): c.name for c in classes},
             'checkpoint_sha256': file_sha256(args.checkpoint)}
    out.parent.mkdir(parents=True, exist_ok=True)
    candidate = out.with_name(f'.{out.stem}.candidate.onnx')
    try:
        report = export_onnx(model, candidate, input_hw=args.input_size, opset=args.opset,
                             dynamic_batch=args.dynamic_batch, metadata=extra,
                             postprocess=args.postprocess)
        result = {'export': report.to_dict()}
        print(f'exported {out} ({report.size_bytes / 1e6:.1f} MB, {report.seconds:.1f} s): '
              f'input uint8 1x{args.input_size[0]}x{args.input_size[1]}x3, '
              f'{report.num_slots} slots, active {report.active_classes}')
        if images:
            parity = check_parity(model, candidate, images, min_agreement=args.min_agreement)
            result['parity'] = parity.to_dict()
            print(f'parity on {parity.num_images} images ({parity.num_pixels} pixels): argmax '
                  f'agreement {parity.argmax_agreement * 100:.4f}%, max |d margin| '
                  f'{parity.max_abs_diff_margin:.2e}, max |d confidence| '
                  f'{parity.max_abs_diff_confidence:.2e}')
            if not parity.passed:
                raise UserError(f'parity check failed: argmax agreement '
                                f'{parity.argmax_agreement * 100:.3f}% < '
                                f'{args.min_agreement * 100:.1f}%; {out} left unchanged')
        os.replace(candidate, out)
    finally:
        candidate.unlink(missing_ok=True)
    result['export']['path'] = str(out)
    if args.json:
        _write_json(args.json, result)
    return 0


def cmd_quantize(args) -> int:
    """Quantise an exported float graph to INT8, calibrated on a folder of real frames."""
    from ldka_ros.inference.quantize import (calibration_images, graph_agreement,
                                             quantize_static_int8)
    from ldka_ros.learning.data import read_rgb

    frames = calibration_images(args.calibration, args.count)
    report = quantize_static_int8(args.onnx, args.out, frames,
                                  calibration_source=str(args.calibration),
                                  method=args.method)
    result = {'quantize': report.to_dict()}
    print(f'wrote {args.out} ({report.size_bytes / 1e6:.1f} MB, {report.seconds:.1f} s): INT8 '
          f'QDQ, calibrated on {report.calibration_frames} frames of {args.calibration}')
    if args.check_images:
        images = [read_rgb(p) for p in find_images(args.check_images, args.check_count)]
        agree = graph_agreement(args.onnx, args.out, images)
        result['agreement_vs_float'] = agree
        print(f'class-id agreement with the float graph on {len(images)} images: '
              f'{agree["agreement"] * 100:.2f}% (boundary pixels '
              f'{agree["boundary_agreement"] * 100:.2f}%)')
    if args.json:
        _write_json(args.json, result)
    return 0


def _bench_model(args):
    from ldka_ros.learning.model import ModelConfig, SegModel

    if args.checkpoint:
        from ldka_ros.learning.checkpoint import load_checkpoint

        model, classes, _ = load_checkpoint(args.checkpoint)
        info = {'source': str(args.checkpoint), 'backbone': model.config.backbone,
                'num_slots': model.num_slots, 'active_classes': model.active_classes()}
        return model, info
    import torch

    torch.manual_seed(0)
    model = SegModel(ModelConfig(backbone=args.backbone, num_slots=args.num_slots))
    model.set_active(range(min(args.active, args.num_slots)))
    info = {'source': 'random init (latency does not depend on weight values)',
            'backbone': args.backbone, 'num_slots': args.num_slots,
            'active_classes': model.active_classes(),
            'parameters': sum(p.numel() for p in model.parameters())}
    return model.eval(), info


def _bench_command(args) -> str:
    """Return the canonical command line that reproduces this benchmark."""
    parts = ['ldka', 'bench-inference']
    if args.checkpoint:
        parts += ['--checkpoint', str(args.checkpoint)]
    else:
        parts += ['--backbone', args.backbone, '--num-slots', str(args.num_slots),
                  '--active', str(args.active)]
    if args.camvid:
        parts += ['--camvid', str(args.camvid), '--eval-count', str(args.eval_count)]
    if args.calibration:
        parts += ['--calibration', str(args.calibration)]
    parts += ['--backends', args.backends,
              '--sizes', ','.join(f'{h}x{w}' for h, w in args.sizes),
              '--iters', str(args.iters), '--warmup', str(args.warmup),
              '--batch', str(args.batch)]
    if args.threads is not None:
        parts += ['--threads', str(args.threads)]
    if args.json:
        parts += ['--json', str(args.json)]
    return ' '.join(parts)


def cmd_bench(args) -> int:
    from ldka_ros.bench.inference import format_table, run_benchmark, split_specs

    model, info = _bench_model(args)
    eval_set, calibration, source = _bench_frames(args)
    record = run_benchmark(model, split_specs(args.backends), args.sizes, iters=args.iters,
                           warmup=args.warmup, threads=args.threads, batch=args.batch,
                           model_info=info, command=_bench_command(args), eval_set=eval_set,
                           calibration=calibration, calibration_source=source)
    print(f'model: {info["source"]}, {info["backbone"]}, {info["num_slots"]} slots; '
          f'{args.iters} iterations after {args.warmup} warm-up, interleaved; load average '
          f'{record.get("load_average_start")} -> {record.get("load_average_end")}')
    print(format_table(record))
    if args.json:
        _write_json(args.json, record)
    return 0


def _bench_frames(args) -> tuple[list, list | None, str]:
    """
    Return (labelled eval frames, calibration frames, where calibration came from).

    Eval frames are spread over CamVid ``val``; calibration frames come from
    ``--calibration`` or else CamVid ``train``, never from the frames scored.
    """
    from ldka_ros.inference.quantize import calibration_images

    eval_set: list = []
    calibration, source = None, ''
    if args.camvid:
        from ldka_ros.learning.data import CamVidDataset

        val = CamVidDataset(args.camvid, 'val')
        picks = sorted(set(np.linspace(0, len(val) - 1, num=min(args.eval_count, len(val)))
                           .round().astype(int)))
        eval_set = [val.load_raw(int(i)) for i in picks]
    folder = args.calibration or (Path(args.camvid) / 'train' if args.camvid else None)
    if folder is not None and 'onnxruntime-int8' in args.backends:
        calibration = calibration_images(folder, args.calibration_count)
        source = str(folder)
    return eval_set, calibration, source


def cmd_probe(args) -> int:
    from ldka_ros.inference.backends.select import probe_backends

    reports = probe_backends(precision=args.precision)
    for report in reports:
        print(report.line())
    if args.json:
        _write_json(args.json, {'probes': [r.to_dict() for r in reports]})
    return 0 if any(r.available for r in reports) else 1


def register(sub) -> None:
    """Add ``export``, ``bench-inference`` and ``probe-backends`` to the ``ldka`` parser."""
    p = sub.add_parser('export', help='export a checkpoint to ONNX (post-processing inside)',
                       description='Export a checkpoint to one ONNX file: uint8 NHWC RGB in, '
                                   'class_ids/confidence/margin out; optional parity check '
                                   'against torch on real images.')
    p.add_argument('--checkpoint', required=True, help='ldka_ros checkpoint (.pt)')
    p.add_argument('--out', required=True, help='ONNX file to write (.onnx)')
    p.add_argument('--input-size', type=_size, default=(240, 320), metavar='HxW',
                   help='fixed input HEIGHTxWIDTH (default 240x320)')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--dynamic-batch', action='store_true', help='dynamic batch axis')
    p.add_argument('--check-images', metavar='DIR',
                   help='folder of real images (or a folder with images/) for the parity '
                        'check; the file is written only if it passes')
    p.add_argument('--check-count', type=int, default=8, help='images used (default 8)')
    p.add_argument('--min-agreement', type=float, default=0.999,
                   help='argmax agreement the parity check needs (default 0.999)')
    p.add_argument('--postprocess', choices=POSTPROCESS_MODES, default=DEFAULT_POSTPROCESS,
                   help='where the top-2 is taken: full = all slot logits upsampled to the '
                        'input size first; decoder[-x2|-x4] = at (2x/4x) the decoder '
                        f'resolution, ids resized nearest (default {DEFAULT_POSTPROCESS})')
    p.add_argument('--json', metavar='PATH', help='write the export/parity report here')
    p.set_defaults(func=cmd_export)

    _register_quantize(sub)

    b = sub.add_parser('bench-inference', help='latency of backends side by side',
                       description='Benchmark inference backends side by side (interleaved '
                                   'iterations) at several input sizes.')
    b.add_argument('--checkpoint', help='checkpoint to benchmark (default: a randomly '
                                        'initialised model; latency does not depend on weights)')
    b.add_argument('--backbone', default='efficientnet_lite0', help='for the random model')
    b.add_argument('--num-slots', type=int, default=32, help='for the random model')
    b.add_argument('--active', type=int, default=12,
                   help='active classes of the random model (default 12: CamVid + background)')
    b.add_argument('--backends', default=DEFAULT_BENCH_BACKENDS,
                   help='comma list of NAME[@POSTPROCESS][[opt=..:intra=..:inter=..:mode=..:'
                        'spin=..]], NAME one of torch, onnxruntime, onnxruntime-cpu, '
                        'onnxruntime-cuda, onnxruntime-int8, tensorrt; the first is the '
                        f'reference of speed-ups and agreement (default {DEFAULT_BENCH_BACKENDS})')
    b.add_argument('--sizes', type=_sizes, default=[(144, 192), (240, 320), (480, 640)],
                   metavar='HxW[,HxW...]', help='input sizes (default 144x192,240x320,480x640)')
    b.add_argument('--camvid', metavar='ROOT',
                   help='CamVid root: time on val frames and score agreement, boundary '
                        'agreement and mIoU on them; calibrate INT8 on train')
    b.add_argument('--eval-count', type=int, default=16, help='val frames scored (default 16)')
    b.add_argument('--calibration', metavar='DIR',
                   help='frames to calibrate onnxruntime-int8 on (default: CamVid train)')
    b.add_argument('--calibration-count', type=int, default=32)
    b.add_argument('--iters', type=int, default=50)
    b.add_argument('--warmup', type=int, default=5)
    b.add_argument('--batch', type=int, default=1)
    b.add_argument('--threads', type=int, default=None,
                   help='intra-op threads for torch and onnxruntime (default: library default)')
    b.add_argument('--json', metavar='PATH', help='write the full record here')
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser('probe-backends', help='which inference backends work here, and why not')
    r.add_argument('--precision', choices=('fp16', 'fp32'), default='fp16',
                   help='TensorRT precision to probe')
    r.add_argument('--json', metavar='PATH')
    r.set_defaults(func=cmd_probe)


def _register_quantize(sub) -> None:
    """Add ``ldka quantize``: INT8 static quantisation of an exported graph."""
    q = sub.add_parser('quantize', help='INT8 static quantisation of an exported graph',
                       description='Quantise an exported float ONNX graph to INT8 (QDQ, ONNX '
                                   'Runtime static quantisation) calibrated on real frames '
                                   '(a frame store, a dataset split or a folder of images).')
    q.add_argument('--onnx', required=True, help='float graph written by ldka export')
    q.add_argument('--out', required=True, help='INT8 graph to write (.onnx)')
    q.add_argument('--calibration', required=True, metavar='DIR',
                   help='folder of frames (or a folder with images/) to calibrate on')
    q.add_argument('--count', type=int, default=32, help='calibration frames (default 32)')
    q.add_argument('--method', choices=('minmax', 'entropy', 'percentile'), default='minmax')
    q.add_argument('--check-images', metavar='DIR',
                   help='real images on which to report agreement with the float graph')
    q.add_argument('--check-count', type=int, default=8, help='images used (default 8)')
    q.add_argument('--json', metavar='PATH', help='write the report here')
    q.set_defaults(func=cmd_quantize)
