"""
ldka_ros: class-incremental semantic segmentation for ROS 2 robots.

Subpackages that import no ROS module (usable and testable without ROS):
``learning`` (model, data, LDKA losses, training steps, evaluation),
``inference`` (export, backends, hot-swap), ``registry`` (model versions),
``imaging`` (image/mask utilities). ``nodes`` holds the thin rclpy adapters and
``cli`` the offline ``ldka`` command.
"""

__version__ = '0.1.0'
