"""
The learning core: model, classes, data, CISS protocols, LDKA losses, steps, evaluation.

Nothing here imports ROS; the learner node and the ``ldka`` CLI both drive it.
"""
