# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Launch the perception graph: segmentation node + learner node (+ RViz, + console).

    ros2 launch ldka_ros perception.launch.py camera_topic:=/camera/image_raw \
        registry_path:=~/.ldka_ros/registry backend:=auto use_rviz:=true use_console:=true

``use_console:=true`` adds the operator's browser console (``label_console_node``) on
http://127.0.0.1:<console_port>/ (localhost only; see its ``host`` and ``access_token``
parameters before opening it to a network).

Both nodes read ``config/perception.yaml`` (or ``params_file``) and subscribe to the
camera through the remap ``image:=<camera_topic>``. The learner's ``~/model_version``
(``<namespace>/learner/model_version``, latched) is what the segmentation node
follows: its ``model_version_topic`` is the relative name ``learner/model_version``,
so every model the learner publishes (or rolls back to) is hot-swapped into the
running segmentation node.

Machines without ``ros2 launch`` (pip-only ROS) start the same graph, described once
more in ``config/graph.yaml``, with
``python -m ldka_ros.nodes.process_starter --graph config/graph.yaml``; a test keeps
the two descriptions in step.

Both nodes are respawned ``RESPAWN_DELAY_S`` after they die, each on its own: a crashed
learner never stops the segmentation, and the labelled frames it stored survive in the
frame store for the restarted one.

Both are managed (lifecycle) nodes started with ``autostart: false``: when a node's
process starts (the first time and after every respawn) a ``configure`` transition is
requested, and when it reaches *inactive* from configuring, ``activate``. A failed
configure leaves the node unconfigured and alive (its log and /diagnostics say why);
``ros2 lifecycle set /segmentation configure`` retries once the cause is fixed. A
node deactivated by hand is not re-activated behind the operator's back.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, RegisterEventHandler,
                            SetEnvironmentVariable)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessStart
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = 'ldka_ros'
#: Seconds before a dead node is started again (config/graph.yaml: respawn_delay).
RESPAWN_DELAY_S = 2.0
# The launch arguments with fixed defaults: name, default, description.
ARGUMENTS = (
    ('camera_topic', '/camera/image_raw', 'sensor_msgs/Image topic of the camera'),
    ('namespace', '', 'namespace of both nodes'),
    ('registry_path', '~/.ldka_ros/registry', 'model registry directory (base model inside)'),
    ('backend', 'auto', 'inference backend: auto, tensorrt, onnxruntime, torch'),
    ('use_rviz', 'false', 'start RViz with config/perception.rviz'),
    ('use_console', 'false', 'start the browser console (label_console_node)'),
    ('console_port', '8765', 'TCP port of the console on 127.0.0.1'),
)


def generate_launch_description() -> LaunchDescription:
    """Return the launch description (arguments, two nodes, optional console and RViz)."""
    share = get_package_share_directory(PACKAGE)
    camera_topic = LaunchConfiguration('camera_topic')
    namespace = LaunchConfiguration('namespace')
    registry_path = LaunchConfiguration('registry_path')
    backend = LaunchConfiguration('backend')
    params_file = LaunchConfiguration('params_file')
    arguments = [DeclareLaunchArgument(name, default_value=default, description=text)
                 for name, default, text in ARGUMENTS]
    arguments.append(DeclareLaunchArgument(
        'params_file', default_value=os.path.join(share, 'config', 'perception.yaml'),
        description='ROS parameters of both nodes'))
    # Fast DDS drops most best-effort images over 512 KB (640x480 rgb8) with its default
    # transports; the shipped profile's larger shared-memory segment carries them
    # (docs/benchmarks/graph.md). Other RMWs ignore the variable.
    arguments.append(DeclareLaunchArgument(
        'fastdds_profile', default_value=os.environ.get(
            'FASTRTPS_DEFAULT_PROFILES_FILE',
            os.path.join(share, 'config', 'fastdds_large_images.xml')),
        description="Fast DDS XML profile of the started nodes ('' = Fast DDS defaults)"))
    arguments.append(SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE',
                                            LaunchConfiguration('fastdds_profile')))
    segmentation = LifecycleNode(
        package=PACKAGE, executable='segmentation_node', name='segmentation',
        namespace=namespace, output='screen', respawn=True, respawn_delay=RESPAWN_DELAY_S,
        # A relative topic: the learner of the same namespace.
        parameters=[params_file, {'registry_path': registry_path, 'backend': backend,
                                  'model_version_topic': 'learner/model_version',
                                  'autostart': False}],
        remappings=[('image', camera_topic)])
    learner = LifecycleNode(
        package=PACKAGE, executable='learner_node', name='learner',
        namespace=namespace, output='screen', respawn=True, respawn_delay=RESPAWN_DELAY_S,
        parameters=[params_file, {'registry_path': registry_path, 'backend': backend,
                                  'autostart': False}],
        remappings=[('image', camera_topic)])
    console = Node(
        package=PACKAGE, executable='label_console_node', name='label_console',
        namespace=namespace, output='screen', respawn=True, respawn_delay=RESPAWN_DELAY_S,
        parameters=[{'port': LaunchConfiguration('console_port')}],
        remappings=[('image', camera_topic)],
        condition=IfCondition(LaunchConfiguration('use_console')))
    rviz = Node(
        package='rviz2', executable='rviz2', name='rviz2', output='screen',
        arguments=['-d', os.path.join(share, 'config', 'perception.rviz')],
        condition=IfCondition(LaunchConfiguration('use_rviz')))
    return LaunchDescription(arguments + [segmentation, learner, console, rviz]
                             + bring_up(segmentation) + bring_up(learner))


def bring_up(node: LifecycleNode) -> list:
    """
    Return the event handlers that configure ``node`` on process start, then activate it.

    On process start, not once at launch: a respawned node comes up unconfigured again.
    Activation follows only the configuring -> inactive transition, so a node that an
    operator deactivates stays inactive.
    """
    def request(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    return [
        RegisterEventHandler(OnProcessStart(
            target_action=node, on_start=[request(Transition.TRANSITION_CONFIGURE)])),
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state='configuring', goal_state='inactive',
            entities=[request(Transition.TRANSITION_ACTIVATE)])),
    ]
