# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Image helpers without ROS: colour overlays and operator prompts (box/polygon -> mask)."""
