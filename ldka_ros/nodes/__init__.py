# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""rclpy adapters: the only place in ldka_ros that imports ROS."""
