"""Simulated robot camera world (pybullet), ROS-free."""
