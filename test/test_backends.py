# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Inference backends: real ONNX Runtime sessions, eager torch, input validation, ``auto``.

TensorRT cannot be installed on the development machines; its end-to-end tests carry
``@pytest.mark.tensorrt`` and skip with the import error as the reason. The engine
cache bookkeeping is plain Python and is tested everywhere with real exports.
"""
from __future__ import annotations

import copy
import json

import cv2
from ldka_ros.inference.backends.base import (Backend, BackendUnavailable, InferenceResult,
                                              validate_batch)
from ldka_ros.inference.backends.onnxruntime_backend import (available_providers, CUDA_EP,
                                                             OnnxRuntimeBackend)
from ldka_ros.inference.backends.select import probe_backends, select_backend
from ldka_ros.inference.backends.tensorrt_backend import (EngineCache, EngineKey,
                                                          tensorrt_status, TensorRTBackend)
from ldka_ros.inference.backends.torch_backend import TorchBackend
from ldka_ros.inference.export import export_onnx, file_sha256, onnx_structure_digest
import numpy as np
import pytest
from test_export import tiny_model, trained_model, val_frames
import torch

HW = (96, 128)
TRT_OK, TRT_REASON = tensorrt_status()
HAS_CUDA_EP = CUDA_EP in available_providers()
needs_tensorrt = pytest.mark.skipif(not TRT_OK, reason=f'TensorRT unusable: {TRT_REASON}')


@pytest.fixture(scope='module')
def model():
    return tiny_model(5)


@pytest.fixture(scope='module')
def onnx_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp('backends') / 'tiny.onnx'
    export_onnx(model, path, input_hw=HW)
    return path


@pytest.fixture(scope='module')
def frames(camvid_root):
    """Real CamVid frames resized to the model input, as one uint8 batch."""
    return np.stack([cv2.resize(f, HW[::-1], interpolation=cv2.INTER_LINEAR)
                     for f in val_frames(camvid_root, 3)])


def test_onnxruntime_reports_providers_actually_used(onnx_path):
    backend = OnnxRuntimeBackend(onnx_path, providers='cpu', intra_op_threads=1)
    with backend:
        info = backend.describe()
        assert info['providers'] == backend.session.get_providers() == ['CPUExecutionProvider']
        assert info['requested_providers'] == ['CPUExecutionProvider']
        assert info['device'] == 'cpu' and info['name'] == 'onnxruntime'
        assert info['artefact'] == str(onnx_path)
        assert backend.session.get_session_options().intra_op_num_threads == 1
        assert backend.input_hw == HW  # read from the graph
    assert not backend.loaded and backend.session is None


def test_onnxruntime_auto_providers_lists_cuda_only_when_available(onnx_path):
    with OnnxRuntimeBackend(onnx_path, providers='auto') as backend:
        requested = backend.describe()['requested_providers']
    assert requested[-1] == 'CPUExecutionProvider'
    assert (CUDA_EP in requested) == HAS_CUDA_EP


@pytest.mark.skipif(HAS_CUDA_EP, reason='this onnxruntime has the CUDA provider')
def test_onnxruntime_cuda_request_is_refused_with_reason(onnx_path):
    with pytest.raises(BackendUnavailable) as info:
        OnnxRuntimeBackend(onnx_path, providers='cuda').load()
    assert CUDA_EP in info.value.reason and 'CPUExecutionProvider' in info.value.reason


def test_onnxruntime_matches_torch_on_real_frames(camvid_root, tmp_path):
    trained = trained_model(camvid_root)
    path = tmp_path / 'trained.onnx'
    export_onnx(trained, path, input_hw=HW)
    batch = np.stack([cv2.resize(f, HW[::-1], interpolation=cv2.INTER_LINEAR)
                      for f in val_frames(camvid_root, 3)])
    with OnnxRuntimeBackend(path, providers='cpu') as ort_b, \
            TorchBackend(trained, device='cpu', input_hw=HW) as torch_b:
        got, ref = ort_b.infer(batch), torch_b.infer(batch)
    assert got.class_ids.shape == ref.class_ids.shape == (3, *HW)
    assert np.mean(got.class_ids == ref.class_ids) >= 0.999
    assert np.abs(got.margin - ref.margin).max() < 1e-2
    assert np.abs(got.confidence - ref.confidence).max() < 1e-3
    assert len(np.unique(ref.class_ids)) >= 3


def test_batch_on_fixed_batch_graph_equals_frame_by_frame(onnx_path, frames):
    with OnnxRuntimeBackend(onnx_path, providers='cpu') as backend:
        whole = backend.infer(frames)
        single = [backend.infer(frames[i:i + 1]) for i in range(len(frames))]
    assert whole.batch_size == len(frames)
    joined = InferenceResult.concat(single)
    assert np.array_equal(whole.class_ids, joined.class_ids)
    assert np.array_equal(whole.margin, joined.margin)
    assert np.array_equal(whole.frame(-1).class_ids, single[-1].class_ids)


def test_torch_backend_copies_the_model(model, frames):
    source = copy.deepcopy(model)
    backend = TorchBackend(source, device='cpu', input_hw=HW).load()
    before = backend.infer(frames[:1])
    with torch.no_grad():
        source.classifier.bias.add_(100.0 * torch.arange(16.0))  # the learner keeps going
    after = backend.infer(frames[:1])
    assert np.array_equal(before.class_ids, after.class_ids)
    info = backend.describe()
    assert info['device'] == 'cpu' and info['providers'] == ['torch-cpu']
    backend.release()


def test_torch_backend_loads_checkpoints(model, frames, tmp_path):
    from ldka_ros.learning.checkpoint import save_checkpoint
    from ldka_ros.learning.classes import camvid_registry

    path = save_checkpoint(tmp_path / 'm.pt', model, camvid_registry(model.num_slots))
    with TorchBackend(path, device='cpu', input_hw=HW) as from_file, \
            TorchBackend(model, device='cpu', input_hw=HW) as from_module:
        assert np.array_equal(from_file.infer(frames).class_ids,
                              from_module.infer(frames).class_ids)
    with pytest.raises(FileNotFoundError):
        TorchBackend(tmp_path / 'missing.pt', device='cpu').load()


def _backends(model, onnx_path) -> list[Backend]:
    return [OnnxRuntimeBackend(onnx_path, providers='cpu'),
            TorchBackend(model, device='cpu', input_hw=HW)]


@pytest.mark.parametrize('which', [0, 1], ids=['onnxruntime', 'torch'])
def test_wrong_inputs_raise_value_error_with_expected_shape(model, onnx_path, which):
    backend = _backends(model, onnx_path)[which]
    with pytest.raises(RuntimeError, match='load'):
        backend.infer(np.zeros((1, *HW, 3), np.uint8))
    backend.load()
    expected = r'\(B, 96, 128, 3\)'
    good = np.zeros((1, *HW, 3), np.uint8)
    with pytest.raises(ValueError, match=expected):
        backend.infer(good.astype(np.float32))
    with pytest.raises(ValueError, match=f'4 channels.*{expected}'):
        backend.infer(np.zeros((1, *HW, 4), np.uint8))
    with pytest.raises(ValueError, match='batch axis'):
        backend.infer(good[0])
    with pytest.raises(ValueError, match=f'120x160.*{expected}'):
        backend.infer(np.zeros((1, 120, 160, 3), np.uint8))
    with pytest.raises(ValueError, match='numpy'):
        backend.infer(good.tolist())
    result = backend.infer(good)  # still works after the errors
    assert result.class_ids.dtype == np.uint8 and result.margin.dtype == np.float32
    backend.release()


def test_validate_batch_accepts_views():
    big = np.zeros((2, 96, 256, 3), np.uint8)
    view = big[:, :, ::2]  # non-contiguous view of the right shape
    out = validate_batch(view, (96, 128))
    assert out.flags['C_CONTIGUOUS'] and out.shape == (2, 96, 128, 3)


def test_inference_result_checks_types():
    ids = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(ValueError, match='float32'):
        InferenceResult(ids, np.zeros((1, 4, 4), np.float64), np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match='uint8'):
        InferenceResult(ids.astype(np.int64), np.zeros((1, 4, 4), np.float32),
                        np.zeros((1, 4, 4), np.float32))


@pytest.mark.skipif(TRT_OK or HAS_CUDA_EP, reason='this machine has TensorRT or CUDA EP')
def test_auto_picks_onnxruntime_cpu_and_says_why(model, onnx_path, frames, caplog):
    caplog.set_level('INFO', logger='ldka_ros.inference.backends.select')
    backend, reports = select_backend('auto', onnx_path=onnx_path, model=model, input_hw=HW)
    try:
        assert backend.name == 'onnxruntime'
        assert backend.describe()['providers'] == ['CPUExecutionProvider']
        assert backend.infer(frames[:1]).class_ids.shape == (1, *HW)
    finally:
        backend.release()
    by_name = {r.name: r for r in reports}
    assert list(by_name) == ['tensorrt', 'onnxruntime-cuda', 'onnxruntime-cpu', 'torch']
    assert not by_name['tensorrt'].available
    assert 'import tensorrt failed' in by_name['tensorrt'].reason
    assert not by_name['onnxruntime-cuda'].available
    assert 'CUDA EP not available' in by_name['onnxruntime-cuda'].reason
    assert by_name['onnxruntime-cpu'].selected and by_name['onnxruntime-cpu'].available
    assert by_name['onnxruntime-cpu'].argmax_agreement >= 0.999
    assert [r.name for r in reports if r.selected] == ['onnxruntime-cpu']
    assert 'import tensorrt failed' in caplog.text  # the skip reason is logged
    json.dumps([r.to_dict() for r in reports])  # reports are JSON-able for the node


@pytest.mark.skipif(TRT_OK, reason='TensorRT works here')
def test_strict_preference_raises_and_lenient_falls_back(model, onnx_path):
    with pytest.raises(BackendUnavailable, match='import tensorrt failed'):
        select_backend('tensorrt', onnx_path=onnx_path, model=model, input_hw=HW, strict=True)
    backend, reports = select_backend('tensorrt', onnx_path=onnx_path, model=model,
                                      input_hw=HW)
    try:
        assert backend.name in ('onnxruntime', 'torch')
        assert reports[0].name == 'tensorrt' and not reports[0].available
    finally:
        backend.release()


def test_select_without_onnx_falls_to_torch(model):
    backend, reports = select_backend('auto', model=model, input_hw=HW)
    try:
        assert backend.name == 'torch'
        skipped = {r.name: r.reason for r in reports if not r.selected}
        if 'onnxruntime-cpu' in skipped:
            assert 'no ONNX file' in skipped['onnxruntime-cpu']
    finally:
        backend.release()
    with pytest.raises(BackendUnavailable, match='no model or checkpoint'):
        select_backend('torch')
    with pytest.raises(ValueError, match='preference'):
        select_backend('openvino', model=model)


def test_probe_reports_are_cached_copies():
    first = probe_backends(('onnxruntime-cpu',))
    first[0].reason = 'changed by a caller'
    second = probe_backends(('onnxruntime-cpu',))
    assert second[0].reason != 'changed by a caller'
    assert second[0].available


@pytest.mark.skipif(TRT_OK, reason='TensorRT works here')
def test_tensorrt_backend_unavailable_reason(onnx_path, tmp_path):
    backend = TensorRTBackend(onnx_path, cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable) as info:
        backend.load()
    assert info.value.reason == TRT_REASON
    assert 'tensorrt' in info.value.reason.lower()
    assert not backend.loaded


def test_tensorrt_backend_rejects_bad_settings(onnx_path):
    with pytest.raises(ValueError, match='precision'):
        TensorRTBackend(onnx_path, precision='int4')
    with pytest.raises(ValueError, match='workspace'):
        TensorRTBackend(onnx_path, workspace_mb=1)


def test_engine_cache_exact_hit_and_refit_candidate(tmp_path):
    """Cache bookkeeping with real exports: same structure -> refit, new shape -> build."""
    a = tiny_model(7)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.classifier.weight.mul_(-1.0)
    paths = {name: tmp_path / f'{name}.onnx' for name in 'abc'}
    export_onnx(a, paths['a'], input_hw=(64, 96))
    export_onnx(b, paths['b'], input_hw=(64, 96))
    export_onnx(a, paths['c'], input_hw=(96, 96))

    def key(name: str, precision: str = 'fp16') -> EngineKey:
        return EngineKey(file_sha256(paths[name]), '10.9.0', 'Orin sm87', precision)

    cache = EngineCache(tmp_path / 'cache')
    cache.check_writable()
    digest = {n: onnx_structure_digest(p) for n, p in paths.items()}
    assert cache.lookup(key('a')) is None
    rec = cache.store(key('a'), b'engine-a', digest['a'], paths['a'], 'build', 1.5,
                      refittable=True)
    assert cache.lookup(key('a')) == rec
    assert cache.engine_path(key('a')).read_bytes() == b'engine-a'
    assert cache.lookup(key('a', 'fp32')) is None  # precision is part of the key
    # New weights, same graph: the engine of 'a' can be refitted for 'b'.
    assert cache.refit_candidate(key('b'), digest['b']) == rec
    # Another input size: no candidate, a build is needed.
    assert cache.refit_candidate(key('c'), digest['c']) is None
    # Another TensorRT version or GPU: never reuse.
    other = EngineKey(key('b').onnx_sha256, '10.3.0', 'Orin sm87', 'fp16')
    assert cache.refit_candidate(other, digest['b']) is None
    # A broken sidecar is ignored, not fatal.
    (cache.dir / 'garbage.json').write_text('{not json', encoding='utf-8')
    assert [r.engine_file for r in cache.records()] == [rec.engine_file]
    # Only final files are left (atomic writes leave no temporaries).
    names = sorted(p.name for p in cache.dir.iterdir())
    assert names == sorted([rec.engine_file, f'{key("a").digest}.json', 'garbage.json'])
    cache.remove(key('a'))
    assert cache.lookup(key('a')) is None


def test_engine_cache_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x', encoding='utf-8')
    with pytest.raises(RuntimeError, match='not writable'):
        EngineCache(blocker / 'cache').check_writable()


@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_engine_build_cache_and_refit(camvid_root, tmp_path):
    trained = trained_model(camvid_root)
    first, second = tmp_path / 'v1.onnx', tmp_path / 'v2.onnx'
    export_onnx(trained, first, input_hw=HW)
    batch = np.stack([cv2.resize(f, HW[::-1], interpolation=cv2.INTER_LINEAR)
                      for f in val_frames(camvid_root, 2)])
    ref = TorchBackend(trained, device='cpu', input_hw=HW).load().infer(batch)
    phases = []
    with TensorRTBackend(first, cache_dir=tmp_path / 'trt', precision='fp32',
                         progress=lambda *a: phases.append(a)) as backend:
        assert backend.load_origin == 'build'
        got = backend.infer(batch)
        assert backend.describe()['providers'] == ['tensorrt']
    assert phases, 'the progress monitor reported nothing'
    assert np.mean(got.class_ids == ref.class_ids) >= 0.999
    with TensorRTBackend(first, cache_dir=tmp_path / 'trt', precision='fp32') as backend:
        assert backend.load_origin == 'cache'  # unchanged model: no rebuild
    changed = copy.deepcopy(trained)
    with torch.no_grad():
        changed.classifier.bias[3] += 5.0
    export_onnx(changed, second, input_hw=HW)
    ref2 = TorchBackend(changed, device='cpu', input_hw=HW).load().infer(batch)
    with TensorRTBackend(second, cache_dir=tmp_path / 'trt', precision='fp32') as backend:
        assert backend.load_origin == 'refit'
        got2 = backend.infer(batch)
    assert np.mean(got2.class_ids == ref2.class_ids) >= 0.999


def test_bench_cli_writes_a_record(tmp_path, capsys):
    from ldka_ros.cli.main import main

    path = tmp_path / 'bench.json'
    rc = main(['bench-inference', '--backbone', 'mobilenetv3_small_050', '--num-slots', '8',
               '--active', '4', '--sizes', '64x96', '--iters', '3', '--warmup', '1',
               '--backends', 'torch,onnxruntime,tensorrt', '--json', str(path)])
    assert rc == 0
    record = json.loads(path.read_text(encoding='utf-8'))
    (result,) = record['results']
    assert result['input_hw'] == [64, 96]
    for name in ('torch', 'onnxruntime'):
        stats = result['backends'][name]
        assert stats['available'] and stats['iters'] == 3
        assert stats['p50_ms'] <= stats['p99_ms'] <= stats['max_ms']
        assert stats['agreement_vs_reference'] >= 0.999  # same post-processing both sides
    if not TRT_OK:
        assert result['backends']['tensorrt'] == {'available': False, 'reason': TRT_REASON}
    assert record['model']['source'].startswith('random init')
    assert record['command'].startswith('ldka bench-inference')
    assert '| 64x96 | onnxruntime |' in capsys.readouterr().out


def test_onnxruntime_session_settings_are_applied_and_reported(onnx_path, frames):
    import onnxruntime as ort
    from ldka_ros.inference.backends.onnxruntime_backend import SessionSettings

    settings = SessionSettings(optimization='basic', intra_op_threads=1, inter_op_threads=1,
                               execution_mode='parallel', allow_spinning=False)
    with OnnxRuntimeBackend(onnx_path, providers='cpu', settings=settings) as backend, \
            OnnxRuntimeBackend(onnx_path, providers='cpu') as default:
        opts = backend.session.get_session_options()
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
        info = backend.describe()
        # What the session runs is reported, whether or not it honours 'parallel'.
        in_use = ('parallel' if opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
                  else 'sequential')
        assert info['execution_mode_in_use'] == in_use
        assert info['session'] == settings.to_dict() and info['allow_spinning'] is False
        assert info['precision'] == 'fp32' and info['postprocess'] == 'decoder-x4'
        # Settings change how the graph runs, never what it computes.
        assert np.array_equal(backend.infer(frames).class_ids, default.infer(frames).class_ids)
        dflt = default.session.get_session_options()
        assert dflt.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert dflt.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    # The explicit arguments override the settings object's fields.
    over = OnnxRuntimeBackend(onnx_path, intra_op_threads=2, allow_spinning=False,
                              settings=settings)
    assert over.settings.intra_op_threads == 2 and over.settings.optimization == 'basic'


def test_onnxruntime_session_settings_reject_bad_values(onnx_path):
    from ldka_ros.inference.backends.onnxruntime_backend import SessionSettings

    with pytest.raises(ValueError, match='optimization'):
        SessionSettings(optimization='max')
    with pytest.raises(ValueError, match='execution_mode'):
        SessionSettings(execution_mode='async')
    with pytest.raises(ValueError, match='inter_op_threads'):
        SessionSettings(inter_op_threads=-1)
    with pytest.raises(ValueError, match='intra_op_threads'):
        OnnxRuntimeBackend(onnx_path, intra_op_threads=-2)


def test_bench_specs_parse_modes_and_session_options():
    from ldka_ros.bench.inference import parse_spec, split_specs

    texts = split_specs('torch@full,onnxruntime[opt=basic:intra=2:spin=1],onnxruntime-int8')
    assert texts == ['torch@full', 'onnxruntime[opt=basic:intra=2:spin=1]', 'onnxruntime-int8']
    torch_spec, ort_spec, int8 = (parse_spec(t) for t in texts)
    assert (torch_spec.name, torch_spec.postprocess) == ('torch', 'full')
    assert ort_spec.session == {'optimization': 'basic', 'intra_op_threads': 2,
                                'allow_spinning': True}
    assert int8.int8 and int8.postprocess == 'decoder-x4'
    half = parse_spec('torch[dev=cuda:prec=fp16]')
    assert half.session == {'device': 'cuda', 'precision': 'fp16'}
    for bad in ('torch[opt=all]', 'onnxruntime@half', 'onnxruntime[opt=max]', 'tflite',
                'onnxruntime[threads=2]', 'torch[prec=int4]', 'onnxruntime[prec=fp16]',
                'tensorrt[intra=2]'):
        with pytest.raises(ValueError):
            parse_spec(bad)
