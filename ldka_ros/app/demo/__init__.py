"""
The one-command demo: a simulated camera, a base model, and teaching it the duck.

``base_model`` trains and caches the demo's base model (no ROS), ``scenario`` scores
masks against the simulator's ground truth and picks frames to label (no ROS),
``report`` turns the measurements into text, JSON and pictures (no ROS). The part that
talks to the running nodes is ``ldka_ros.nodes.demo_client``.
"""
