"""
Every benchmark of the project, each run as an ``ldka bench-*`` command.

``record`` is what every benchmark JSON records besides its figures (date, command,
machine, load) and the one latency-percentile definition. ``learning`` (class-incremental
protocols x methods x seeds), ``first_model`` (a cold start through the learner's own
job), ``inference`` (backends side by side), ``hotswap`` (frame gaps while a version is
swapped), ``step_recipe`` (the demo's step optimisation), ``sim_render`` (the simulator's
frame rate), ``prompts`` (prompt-to-mask methods and label propagation against the
simulator's exact masks), ``teaching`` (what propagation and suggested frames are worth to
a learning step), ``ros_graph`` (latency over the ROS graph) and ``fleet`` (a version
travelling to robots over ROS) measure. Only ``ros_graph`` and ``fleet`` import rclpy;
the core never imports this package (test/test_layers.py).
"""
