# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
``HotSwapper.close(timeout)`` returns in time even when a backend never returns.

The backends are real ONNX Runtime sessions of the backend probe's graph; only their
``load`` or ``infer`` is made to block on an event that the test sets at the end, the
way a hung driver or a stuck engine build would block.
"""
import threading
import time

from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
from ldka_ros.inference.backends.select import probe_artefacts
from ldka_ros.inference.hotswap import HotSwapper
import numpy as np
import pytest

#: A node shutting down allows this long above close()'s own timeout.
SLACK_S = 1.5


class BlockingBackend(OnnxRuntimeBackend):
    """ONNX Runtime backend whose load/infer can be held until ``gate`` is set."""

    def __init__(self, path, block_load: bool = False) -> None:
        super().__init__(path, providers='cpu', intra_op_threads=1)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.block_load = block_load
        self.block_infer = False

    def _load(self) -> None:
        if self.block_load:
            self.entered.set()
            self.gate.wait()
        super()._load()

    def _infer(self, batch):
        if self.block_infer:
            self.entered.set()
            self.gate.wait()
        return super()._infer(batch)


@pytest.fixture(scope='module')
def onnx_path():
    return probe_artefacts()[1]


@pytest.fixture
def batch():
    _, _, frames = probe_artefacts()
    return frames


def close_within(swapper: HotSwapper, timeout: float) -> tuple[bool, float]:
    """Call ``close(timeout)`` in a thread; fail (not hang) if it does not return."""
    out = {}

    def run() -> None:
        started = time.monotonic()
        out['ok'] = swapper.close(timeout=timeout)
        out['seconds'] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout + 10.0)
    assert not thread.is_alive(), f'close(timeout={timeout}) still blocked after {timeout + 10} s'
    return out['ok'], out['seconds']


def wait_until(predicate, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_close_returns_while_an_inference_hangs(onnx_path, batch):
    serving = BlockingBackend(onnx_path)
    swapper = HotSwapper(serving, 'v0001', warmup_frames=1)
    expected = swapper.infer(batch).class_ids
    serving.block_infer = True
    results = []
    caller = threading.Thread(target=lambda: results.append(swapper.infer(batch)), daemon=True)
    caller.start()
    assert serving.entered.wait(10)
    ok, seconds = close_within(swapper, 0.5)
    assert ok is False and seconds < 0.5 + SLACK_S, seconds
    assert serving.loaded  # the hung inference still owns its session
    serving.gate.set()
    caller.join(10)
    np.testing.assert_array_equal(results[0].class_ids, expected)
    assert wait_until(lambda: not serving.loaded), 'released once the inference returned'


def test_close_returns_while_a_swap_hangs_in_load(onnx_path, batch):
    serving = BlockingBackend(onnx_path)
    swapper = HotSwapper(serving, 'v0001', warmup_frames=1)
    stuck = BlockingBackend(onnx_path, block_load=True)
    future = swapper.swap_to(lambda: stuck, 'v0002')
    assert stuck.entered.wait(10)
    ok, seconds = close_within(swapper, 0.5)
    assert ok is False and seconds < 0.5 + SLACK_S, seconds
    assert not serving.loaded and not future.done()
    late = swapper.swap_to(lambda: BlockingBackend(onnx_path), 'v0003').result(1)
    assert not late.ok and 'closed' in late.reason
    stuck.gate.set()  # the load returns: the swap must refuse and release, not switch
    report = future.result(20)
    assert not report.ok and 'closed' in report.reason
    assert not stuck.loaded
    with pytest.raises(RuntimeError, match='closed'):
        swapper.infer(batch)


def test_close_bounds_the_total_wait_of_a_hung_swap_and_a_hung_inference(onnx_path, batch):
    serving = BlockingBackend(onnx_path)
    swapper = HotSwapper(serving, 'v0001', warmup_frames=1)
    serving.block_infer = True
    caller = threading.Thread(target=swapper.infer, args=(batch,), daemon=True)
    caller.start()
    assert serving.entered.wait(10)
    stuck = BlockingBackend(onnx_path, block_load=True)
    swapper.swap_to(lambda: stuck, 'v0002')
    assert stuck.entered.wait(10)
    ok, seconds = close_within(swapper, 0.5)
    assert ok is False and seconds < 0.5 + SLACK_S, seconds
    serving.gate.set()
    stuck.gate.set()
    caller.join(10)
    assert wait_until(lambda: not serving.loaded and not stuck.loaded)


def test_close_without_hangs_reports_success(onnx_path, batch):
    serving = BlockingBackend(onnx_path)
    swapper = HotSwapper(serving, 'v0001', warmup_frames=1)
    report = swapper.swap_to(lambda: BlockingBackend(onnx_path), 'v0002').result(30)
    assert report.ok, report.reason
    ok, seconds = close_within(swapper, 5.0)
    assert ok is True and not serving.loaded
