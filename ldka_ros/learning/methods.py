# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The class-incremental methods by name: the one list every layer validates against.

Why a module of its own: the learner node, the learning job, the CLI and the benchmark
all check a method name, and the node must do so without importing torch (seconds on a
robot) — so the names live here, and ``learning.steps`` implements them.
"""
from __future__ import annotations

#: Every method ``learning.steps.learn_step`` implements.
METHODS = ('finetune', 'mib', 'ldka', 'ldka+gfr', 'joint')
#: Methods a robot can run on operator labels: ``joint`` needs every old class labelled in
#: the step's frames, which operator labels never are (it is the benchmark's reference).
ROBOT_METHODS = ('finetune', 'mib', 'ldka', 'ldka+gfr')
#: Methods whose loss trains background pixels on the old model's pseudo-labels (and so
#: read ``LDKAConfig.tau``, the learner's ``pseudo_label_threshold``).
PSEUDO_LABEL_METHODS = ('ldka', 'ldka+gfr')
#: Allowed pseudo-label thresholds: below 0.5 a pixel could take a class the old model
#: finds less likely than all the others together.
PSEUDO_LABEL_THRESHOLD_RANGE = (0.5, 1.0)

#: ``LDKAConfig`` switches of a robot step that differ from the library's defaults (those
#: were decided on CamVid): the rest of background stays hard. Decided on the robot's own
#: decision scenes (docs/benchmarks/label_efficiency.md), which agree with CamVid on the
#: other change (SKD's stabilisers off); the learner's job and the robot benchmarks build
#: their configuration with them.
ROBOT_LDKA_SWITCHES = {'pseudo_rest_unbiased': False}
#: The learner's defaults for the two settings an operator may change per robot
#: (parameters ``classifier_init`` and ``pseudo_label_threshold``), measured on few
#: labelled frames of one object (docs/benchmarks/label_efficiency.md): imprinted rows
#: learn the object better from 4 or more frames, and 0.9 keeps old classes better than
#: 0.7 at the same new-object IoU. ``ldka learn-step --folder`` uses them too.
ROBOT_CLASSIFIER_INIT = 'imprint'
ROBOT_PSEUDO_LABEL_THRESHOLD = 0.9

#: How a new class's classifier row starts in an LDKA step: ``mib`` (a copy of
#: background's row, MiB's rule) or ``imprint`` (the mean decoder feature of the class's
#: labelled pixels). Here, not in ``learning.steps``, because the learner node and the job
#: spec validate the name without importing torch.
CLASSIFIER_INITS = ('mib', 'imprint')


def pseudo_label_threshold_error(value: float) -> str | None:
    """Return why ``value`` is not a usable pseudo-label threshold, or None."""
    low, high = PSEUDO_LABEL_THRESHOLD_RANGE
    if not low <= float(value) <= high:
        return f'pseudo_label_threshold must be in [{low}, {high}], got {value}'
    return None
