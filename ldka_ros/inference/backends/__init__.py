# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Inference backends behind one interface (``base.Backend``) and the ``auto`` probe.

``torch_backend`` (eager reference), ``onnxruntime_backend`` (CUDA or CPU provider),
``tensorrt_backend`` (engine cache, refit; needs TensorRT) and ``select`` (probe the
machine and pick the fastest backend that builds, runs and matches torch).
"""
from ldka_ros.inference.backends.base import Backend, BackendUnavailable, InferenceResult

__all__ = ['Backend', 'BackendUnavailable', 'InferenceResult']
