# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Inference: ONNX export, interchangeable backends, the frame pipeline and hot-swap.

Nothing here imports ROS. Heavy libraries (torch, onnxruntime, tensorrt) are imported by
the modules that need them, so ``import ldka_ros.inference`` stays cheap.
"""
