# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The demo's graph: where a run keeps its files, the nodes' parameters, and the launchers.

The graph (sim camera, segmentation node, learner node) starts through ``ros2 launch``
where ROS's launch tools exist, else through the process starter, in its own ROS domain
(random ``ROS_DOMAIN_ID``, localhost discovery) unless the user chose one. Both
launchers offer the same ``poll`` / ``stop``, so the run does not care which one started
the nodes. Nothing here talks to the nodes; that is ``ldka_ros.nodes.demo_client``.
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
from typing import Callable, TYPE_CHECKING

from ldka_ros.fsio import atomic_write_text
from ldka_ros.nodes.process_starter import NodeSpec, start_graph

if TYPE_CHECKING:  # the base model's module imports torch; only its config type is used
    from ldka_ros.app.demo.base_model import BaseModelConfig
    from ldka_ros.app.demo.scenario import DemoSettings

Echo = Callable[[str], None]
#: The demo scene's seed: a table layout the base model never saw in training.
SCENE_SEED = 7


@dataclass
class DemoTopics:
    """Absolute names of the nodes the demo talks to (no namespace by default)."""

    camera: str = '/sim_camera'
    segmentation: str = '/segmentation'
    learner: str = '/learner'

    @property
    def image(self) -> str:
        return f'{self.camera}/image_raw'


@dataclass
class DemoPaths:
    """Where a demo run keeps its files (all under the output folder)."""

    out: Path

    @property
    def registry(self) -> Path:
        return self.out / 'registry'

    @property
    def frames(self) -> Path:
        return self.out / 'labelled_frames'

    @property
    def work(self) -> Path:
        return self.out / 'learner_work'

    @property
    def node_log(self) -> Path:
        return self.out / 'nodes.log'

    @property
    def params(self) -> Path:
        return self.out / 'demo_params.yaml'


def find_config(name: str) -> Path | None:
    """Return ``config/<name>`` of the installed package (ament share) or the checkout."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory('ldka_ros')) / 'config' / name)
    except Exception:  # noqa: B902 - not in an ament index: use the source checkout
        pass
    candidates.append(Path(__file__).resolve().parents[3] / 'config' / name)
    for path in candidates:
        if path.is_file():
            return path
    return None


def demo_parameters(cfg: BaseModelConfig, settings: DemoSettings, paths: DemoPaths,
                    backend: str = 'auto', device: str = 'auto') -> dict:
    """
    Return the ROS parameters file content of the demo graph.

    Starts from the shipped ``config/perception.yaml`` (so the demo runs the nodes as
    configured for a robot) and sets what the demo needs: its own registry and frame
    store, the sim camera's scene, and a CPU-friendly split between the learner and
    the segmentation node while training.
    """
    import yaml

    base: dict = {}
    shipped = find_config('perception.yaml')
    if shipped is not None:
        base = yaml.safe_load(shipped.read_text()) or {}
    h, w = cfg.render_hw
    wanted = {
        '/**/sim_camera': {
            'width': w, 'height': h, 'rate_hz': float(settings.camera_rate_hz),
            'seed': SCENE_SEED + int(settings.seed), 'objects': list(cfg.objects),
            'class_map': cfg.sim_class_map(), 'camera_speed': float(settings.camera_speed)},
        '/**/segmentation': {
            'registry_path': str(paths.registry), 'backend': backend,
            'threads': int(settings.seg_threads),
            'model_version_topic': 'learner/model_version'},
        '/**/learner': {
            'registry_path': str(paths.registry), 'frame_store_path': str(paths.frames),
            'backend': backend, 'device': device,
            'default_iterations': int(settings.learn_iterations),
            'learning_rate': float(settings.learn_lr),
            'job_work_dir': str(paths.work), 'segmentation_node': 'segmentation',
            'seed': int(settings.seed),
            # The demo lowers the segmentation rate while training instead of renicing
            # the job: on a shared CPU a reniced job would wait behind every other process.
            'job_nice': 0,
            'segmentation_rate_while_training': float(settings.seg_rate_while_learning)},
    }
    for name in ('min_new_class_iou', 'max_old_class_drop', 'pseudo_label_threshold'):
        if getattr(settings, name) is not None:
            wanted['/**/learner'][name] = float(getattr(settings, name))
    for name in ('classifier_init', 'method'):
        if getattr(settings, name) is not None:
            wanted['/**/learner'][name] = getattr(settings, name)
    out: dict = {}
    for node, values in wanted.items():
        params = dict(((base.get(node) or {}).get('ros__parameters') or {}))
        params.update(values)
        out[node] = {'ros__parameters': params}
    return out


def write_parameters(cfg: BaseModelConfig, settings: DemoSettings, paths: DemoPaths,
                     backend: str, device: str) -> Path:
    """Write the demo's parameters file (``<out>/demo_params.yaml``) and return its path."""
    import yaml

    text = ('# Parameters of the ldka_ros demo graph (written by `ldka demo`).\n'
            + yaml.safe_dump(demo_parameters(cfg, settings, paths, backend, device),
                             sort_keys=False))
    return Path(atomic_write_text(paths.params, text))


def node_specs(paths: DemoPaths, nodes: tuple[str, ...] = ('sim_camera', 'segmentation',
                                                           'learner')) -> list[NodeSpec]:
    """Return the demo graph for the process starter (one parameters file for all)."""
    modules = {'sim_camera': 'ldka_ros.nodes.sim_camera_node',
               'segmentation': 'ldka_ros.nodes.segmentation_node',
               'learner': 'ldka_ros.nodes.learner_node'}
    image = DemoTopics().image
    specs = []
    for name in nodes:
        remaps = {} if name == 'sim_camera' else {'image': image}
        specs.append(NodeSpec(module=modules[name], name=name, params_file=str(paths.params),
                              remaps=remaps))
    return specs


def isolated_ros_env(echo: Echo) -> dict[str, str]:
    """
    Return the ROS environment for the demo's processes (and set it in this process).

    A random ``ROS_DOMAIN_ID`` (1..100) and localhost-only discovery keep a demo from
    talking to another robot or another run on the network; a domain or discovery
    range the user set is kept.
    """
    env: dict[str, str] = {}
    if os.environ.get('ROS_DOMAIN_ID', '').strip():
        echo(f'ROS domain {os.environ["ROS_DOMAIN_ID"]} (from ROS_DOMAIN_ID)')
    else:
        env['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(1, 100))
        echo(f'ROS domain {env["ROS_DOMAIN_ID"]} (random, isolated; set ROS_DOMAIN_ID to '
             'choose one)')
    if not os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE'):
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.update(env)
    return env


class LaunchGraph:
    """
    ``ros2 launch`` (one process group) plus extra nodes from the process starter.

    Offers the same ``poll``/``stop`` as :class:`StarterGraph`.
    """

    def __init__(self, command: list[str], env: dict[str, str], log,
                 extra: list[NodeSpec]) -> None:
        self.command = command
        self.extra = start_graph(extra, env=env, output=log) if extra else None
        try:
            self.popen = subprocess.Popen(command, env={**os.environ, **env},
                                          stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        except BaseException:
            if self.extra is not None:
                self.extra.stop(5.0, 5.0)
            raise

    def poll(self) -> list[str]:
        dead = [d.describe() for d in self.extra.poll()] if self.extra is not None else []
        code = self.popen.poll()
        return dead + ([] if code is None else [f'ros2 launch exited with code {code}'])

    def stop(self, sigint_timeout: float = 15.0, sigterm_timeout: float = 5.0) -> None:
        try:
            for sig, timeout in ((signal.SIGINT, sigint_timeout),
                                 (signal.SIGTERM, sigterm_timeout), (signal.SIGKILL, 5.0)):
                if self.popen.poll() is not None:
                    break
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if self.extra is not None:
                self.extra.stop(sigint_timeout, sigterm_timeout)


class StarterGraph:
    """The process starter's Graph with a ``poll`` that returns descriptions."""

    def __init__(self, specs: list[NodeSpec], env: dict[str, str], log) -> None:
        self.graph = start_graph(specs, env=env, output=log)

    def poll(self) -> list[str]:
        return [d.describe() for d in self.graph.poll()]

    def stop(self, sigint_timeout: float = 15.0, sigterm_timeout: float = 5.0) -> None:
        self.graph.stop(sigint_timeout, sigterm_timeout)


def launch_available() -> bool:
    """Return True where ``ros2 launch`` and this package's launch file can be used."""
    if shutil.which('ros2') is None:
        return False
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory('ldka_ros'))
    except Exception:  # noqa: B902 - no ament index entry: not launchable
        return False
    return (share / 'launch' / 'perception.launch.py').is_file()


def launch_command(paths: DemoPaths, backend: str) -> list[str]:
    """
    Return the ``ros2 launch`` command that starts segmentation and learner nodes.

    The shipped launch file has no camera; the sim camera is started beside it.
    """
    return ['ros2', 'launch', 'ldka_ros', 'perception.launch.py',
            f'camera_topic:={DemoTopics().image}', f'registry_path:={paths.registry}',
            f'backend:={backend}', f'params_file:={paths.params}']
