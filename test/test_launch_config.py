# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The launch file, its parameters file, the process-starter graph and the RViz config.

``launch``/``launch_ros`` cannot be installed with pip-only ROS, so the launch file is
checked by reading it (its AST) and by starting the very executables it names, with the
very parameters file it passes, as real processes: every parameter in the YAML must be
declared by its node (rclpy silently ignores undeclared ones, so a typo would otherwise
pass unnoticed) and hold the YAML's value, and the topics the launch file wires (the
camera remap, the learner's model version, the RViz image topics) must exist on the
running nodes. Where ``import launch`` works (a real ROS install) the launch description
itself is built and inspected as well.
"""
from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO_ROOT / 'launch' / 'perception.launch.py'
PARAMS_FILE = REPO_ROOT / 'config' / 'perception.yaml'
GRAPH_FILE = REPO_ROOT / 'config' / 'graph.yaml'
RVIZ_FILE = REPO_ROOT / 'config' / 'perception.rviz'
LAUNCH_ARGUMENTS = {'camera_topic', 'namespace', 'registry_path', 'backend', 'use_rviz',
                    'params_file', 'use_console', 'console_port', 'fastdds_profile'}


# -- reading the launch file ---------------------------------------------------------------
def _constants(tree: ast.Module) -> dict:
    """Return the module-level ``NAME = <literal>`` assignments of a parsed file."""
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            try:
                out[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except ValueError:
                continue
    return out


def _literal(node: ast.AST, constants: dict | None = None):
    """Return a literal's (or module constant's) value; None if computed at launch time."""
    if isinstance(node, ast.Name) and constants and node.id in constants:
        return constants[node.id]
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def launch_nodes() -> list[dict]:
    """
    Return the ``Node(...)``/``LifecycleNode(...)`` calls of the launch file as dicts.

    Each holds the call's literal keywords, ``lifecycle`` (a managed node) and the
    variable it is assigned to.
    """
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    consts = _constants(tree)
    targets = {id(stmt.value): stmt.targets[0].id for stmt in ast.walk(tree)
               if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)}
    nodes = []
    for call in ast.walk(tree):
        kind = getattr(call.func, 'id', None) if isinstance(call, ast.Call) else None
        if kind in ('Node', 'LifecycleNode'):
            info = {kw.arg: kw.value for kw in call.keywords}
            remaps = []
            for item in getattr(info.get('remappings'), 'elts', []):
                remaps.append(_literal(item.elts[0]))
            nodes.append({'package': _literal(info['package'], consts),
                          'executable': _literal(info['executable'], consts),
                          'name': _literal(info['name'], consts), 'remap_sources': remaps,
                          'respawn': _literal(info.get('respawn', ast.Constant(False)),
                                              consts),
                          'respawn_delay': _literal(
                              info.get('respawn_delay', ast.Constant(0.0)), consts),
                          'lifecycle': kind == 'LifecycleNode',
                          'variable': targets.get(id(call)),
                          'source': ast.unparse(call)})
    return nodes


def argument_table() -> dict[str, str]:
    """Return ``{name: default}`` of the launch file's ``ARGUMENTS`` table."""
    table = _constants(ast.parse(LAUNCH_FILE.read_text())).get('ARGUMENTS', ())
    return {name: default for name, default, _ in table}


def launch_arguments() -> set[str]:
    """Return the names the launch file declares: literal DeclareLaunchArgument calls, table."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    literal = {_literal(call.args[0]) for call in ast.walk(tree)
               if isinstance(call, ast.Call)
               and getattr(call.func, 'id', None) == 'DeclareLaunchArgument'}
    return (literal - {None}) | set(argument_table())


def console_scripts() -> dict[str, str]:
    """Return ``{script: 'module:function'}`` from setup.py's entry points (its AST)."""
    tree = ast.parse((REPO_ROOT / 'setup.py').read_text())
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', None) == 'setup':
            for kw in call.keywords:
                if kw.arg == 'entry_points':
                    scripts = ast.literal_eval(kw.value)['console_scripts']
                    return dict(s.replace(' ', '').split('=', 1) for s in scripts)
    raise AssertionError('setup.py declares no console_scripts')


# -- static checks -------------------------------------------------------------------------
def test_launch_file_starts_existing_executables_with_declared_arguments():
    assert launch_arguments() == LAUNCH_ARGUMENTS
    nodes = {n['executable']: n for n in launch_nodes()}
    assert set(nodes) == {'segmentation_node', 'learner_node', 'label_console_node', 'rviz2'}
    scripts = console_scripts()
    installed = REPO_ROOT / 'install' / 'ldka_ros' / 'lib' / 'ldka_ros'
    for exe in ('segmentation_node', 'learner_node', 'label_console_node'):
        node = nodes[exe]
        assert node['package'] == 'ldka_ros' and exe in scripts, node['source']
        module, func = scripts[exe].split(':')
        assert callable(getattr(importlib.import_module(module), func)), scripts[exe]
        if installed.is_dir():
            assert (installed / exe).is_file(), f'{exe} missing in {installed}; colcon build'
        # The camera reaches both nodes through the remap of their relative `image`.
        assert node['remap_sources'] == ['image'], node['source']
    for exe in ('segmentation_node', 'learner_node'):
        assert 'params_file' in nodes[exe]['source']
    assert nodes['label_console_node']['name'] == 'label_console'
    assert 'use_console' in nodes['label_console_node']['source']
    assert 'console_port' in nodes['label_console_node']['source']
    assert nodes['segmentation_node']['name'] == 'segmentation'
    assert nodes['learner_node']['name'] == 'learner'
    # Both are restarted when they die, after a delay (a literal or module constant, so
    # that config/graph.yaml can be checked against it).
    for exe in ('segmentation_node', 'learner_node'):
        assert nodes[exe]['respawn'] is True, nodes[exe]['source']
        delay = nodes[exe]['respawn_delay']
        assert isinstance(delay, (int, float)) and delay > 0, nodes[exe]['source']
    assert nodes['rviz2']['respawn'] is False
    # Both are managed: started unconfigured, brought up by the launch file's handlers
    # (configure on every process start, activate once configured).
    text = LAUNCH_FILE.read_text()
    for exe in ('segmentation_node', 'learner_node'):
        assert nodes[exe]['lifecycle'], nodes[exe]['source']
        assert "'autostart': False" in nodes[exe]['source']
        assert f'bring_up({nodes[exe]["variable"]})' in text
    assert 'OnProcessStart(' in text and 'Transition.TRANSITION_CONFIGURE' in text
    assert "start_state='configuring', goal_state='inactive'" in text
    assert 'Transition.TRANSITION_ACTIVATE' in text
    # The segmentation node follows the learner of its own namespace.
    assert "'model_version_topic': 'learner/model_version'" in \
        nodes['segmentation_node']['source']
    assert 'perception.rviz' in nodes['rviz2']['source']
    assert 'use_rviz' in nodes['rviz2']['source']


def test_process_starter_graph_matches_the_launch_file():
    from ldka_ros.nodes.process_starter import load_graph

    specs = load_graph(GRAPH_FILE)
    # Optional nodes (a launch condition: the console) are not part of the graph file.
    launched = {(n['executable'], n['name']) for n in launch_nodes()
                if n['package'] == 'ldka_ros' and 'condition=' not in n['source']}
    assert {(s.executable, s.name) for s in specs} == launched
    respawn = {n['name']: (n['respawn'], n['respawn_delay']) for n in launch_nodes()}
    managed = {n['name']: n['lifecycle'] for n in launch_nodes()}
    for spec in specs:
        # Managed in both: the starter drives the transitions the launch file's
        # handlers drive.
        assert spec.lifecycle == managed[spec.name] is True, spec
        assert spec.ros_args()[-2:] == ['-p', 'autostart:=false']
        assert Path(spec.params_file) == PARAMS_FILE
        assert 'image' not in spec.remaps  # so that --remap image:=<camera> applies
        # The same supervision as the launch file; the starter adds a back-off and a
        # crash-loop limit, which launch does not have.
        assert (spec.respawn, spec.respawn_delay) == respawn[spec.name], spec
        assert spec.respawn_max_delay >= spec.respawn_delay and spec.respawn_max_retries > 0
        assert not spec.required  # neither node's death may stop the other
        kwargs = spec.launch_kwargs()
        assert (kwargs['respawn'], kwargs['respawn_delay']) == respawn[spec.name]


def test_rviz_config_is_valid_yaml_with_the_segmentation_images():
    data = yaml.safe_load(RVIZ_FILE.read_text())
    manager = data['Visualization Manager']
    assert manager['Class'] == '' and manager['Enabled'] is True
    images = {d['Topic']['Value']: d for d in manager['Displays']
              if d['Class'] == 'rviz_default_plugins/Image'}
    for topic in ('/segmentation/overlay', '/segmentation/mask', '/segmentation/margin',
                  '/learner/last_label_mask', '/camera/image_raw'):
        assert topic in images, f'no Image display for {topic}'
        qos = images[topic]['Topic']
        assert qos['Reliability Policy'] in ('Best Effort', 'Reliable')
        assert qos['Durability Policy'] == 'Volatile' and qos['Depth'] >= 1
    # The camera display matches the launch file's default camera topic.
    assert argument_table()['camera_topic'] == '/camera/image_raw'
    assert {p['Class'] for p in data['Panels']} >= {'rviz_common/Displays'}


def test_launch_description_builds_where_launch_is_installed():
    try:
        import launch
        import launch_ros  # noqa: F401
        launch.LaunchDescription  # the repo's launch/ folder also imports as `launch`
    except (ImportError, AttributeError) as exc:
        pytest.skip(f'launch/launch_ros are not installable with pip-only ROS ({exc}); '
                    'ros2 launch is missing here, so the launch file (its LifecycleNode '
                    'actions and their event handlers) is checked from its source and by '
                    'starting its executables instead')
    from launch.actions import DeclareLaunchArgument, RegisterEventHandler
    from launch_ros.actions import LifecycleNode, Node

    spec = importlib.util.spec_from_file_location('perception_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == LAUNCH_ARGUMENTS
    assert sum(isinstance(e, Node) for e in description.entities) == 3
    assert sum(isinstance(e, LifecycleNode) for e in description.entities) == 2
    assert sum(isinstance(e, RegisterEventHandler) for e in description.entities) == 4


# -- the parameters file against the real nodes ---------------------------------------------
def _params_by_node() -> dict[str, dict]:
    data = yaml.safe_load(PARAMS_FILE.read_text())
    out = {}
    for key, section in data.items():
        assert key.startswith('/**/'), f'{key}: use /**/<node name> so any namespace matches'
        out[key[len('/**/'):]] = section['ros__parameters']
    return out


def _wait_ok(client, request, ros_harness, timeout=30.0):
    ros_harness.wait_until(lambda: client.service_is_ready(), timeout,
                           f'service {client.srv_name}')
    return ros_harness.call_service(client, request, timeout)


@pytest.mark.ros
@pytest.mark.slow
def test_every_parameter_in_the_params_file_is_declared_by_its_node(
        tmp_path, camvid_root, ros_launcher, ros_node, ros_namespace):
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import DescribeParameters, GetParameters
    from rclpy.parameter import parameter_value_to_python
    import ros_harness
    from test_learning_job import base_registry

    from ldka_ros.nodes.process_starter import find_executable

    params = _params_by_node()
    assert set(params) == {'segmentation', 'learner'}
    registry = base_registry(tmp_path / 'registry', camvid_root)
    overrides = {'registry_path': str(registry)}
    executables = {n['name']: n['executable'] for n in launch_nodes()}
    for name in params:
        extra = dict(overrides)
        if name == 'learner':
            extra['frame_store_path'] = str(tmp_path / 'frames')
        ros_launcher.start(name, [find_executable(executables[name]), '--ros-args',
                                  '-r', f'__node:={name}', '--params-file', str(PARAMS_FILE)],
                           params=extra)
    node = ros_node.node
    for name, expected in params.items():
        fqn = f'{ros_namespace}/{name}'
        describe = node.create_client(DescribeParameters, f'{fqn}/describe_parameters')
        get = node.create_client(GetParameters, f'{fqn}/get_parameters')
        names = sorted(expected)
        described = _wait_ok(describe, DescribeParameters.Request(names=names), ros_harness,
                             60.0)
        values = _wait_ok(get, GetParameters.Request(names=names), ros_harness)
        for pname, desc, value in zip(names, described.descriptors, values.values):
            assert value.type != ParameterType.PARAMETER_NOT_SET, \
                f'{name}: parameter {pname!r} in {PARAMS_FILE.name} is not declared'
            assert desc.description, f'{name}: {pname!r} has no description'
            want = (str(tmp_path / 'frames') if pname == 'frame_store_path'
                    else overrides.get(pname, expected[pname]))
            got = parameter_value_to_python(value)
            assert got == want, f'{name}.{pname} = {got!r}, {PARAMS_FILE.name} says {want!r}'
    # The wiring the launch file relies on, on the running nodes.
    topics = {}

    def subscriptions(name):
        # The segmentation node takes camera frames on a helper node, <name>_camera.
        nodes = {n for n, ns in node.get_node_names_and_namespaces() if ns == ros_namespace}
        return [t for n in (name, f'{name}_camera') if n in nodes
                for t in node.get_subscriber_names_and_types_by_node(n, ros_namespace)]

    def wired():
        for name in params:
            subs = subscriptions(name)
            pubs = node.get_publisher_names_and_types_by_node(name, ros_namespace)
            topics[name] = ({t for t, _ in subs}, {t for t, _ in pubs})
        return all(f'{ros_namespace}/image' in topics[n][0] for n in params) and \
            f'{ros_namespace}/learner/model_version' in topics['segmentation'][0]

    ros_harness.wait_until(wired, 30.0, 'the nodes to subscribe to image and the model '
                           'version', ros_launcher)
    assert f'{ros_namespace}/learner/model_version' in topics['learner'][1]
    rviz = yaml.safe_load(RVIZ_FILE.read_text())['Visualization Manager']['Displays']
    for display in rviz:
        topic = display['Topic']['Value']
        owner = topic.split('/')[1]
        if owner in params:
            assert f'{ros_namespace}{topic}' in topics[owner][1], \
                f'RViz shows {topic}, which {owner} does not publish'


def test_params_file_parses_and_setup_installs_the_config():
    params = _params_by_node()
    for section in params.values():
        for key, value in section.items():
            assert isinstance(key, str) and value is not None, key
    text = (REPO_ROOT / 'setup.py').read_text()
    assert "glob('launch/*.launch.py')" in text
    assert "glob('config/*.yaml') + glob('config/*.rviz')" in text
    assert os.path.basename(GRAPH_FILE).endswith('.yaml')
