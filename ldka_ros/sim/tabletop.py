"""
A pybullet tabletop scene seen by a slowly moving camera: RGB, metric depth, exact masks.

Why a simulator at all: the demo and the tests need a robot camera that shows objects
the model knows and one it does not, with *exact* per-pixel ground truth so that a
taught class can be scored. pybullet's CPU renderer (``ER_TINY_RENDERER``) runs in DIRECT
mode without a display or GPU and its segmentation buffer gives the body id of every
pixel, so class masks and object boxes are exact instead of hand drawn.

Frames vary (lighting direction and strength, light colour, table and floor tint,
camera distance, elevation and azimuth, object poses) so a segmenter trained on them
does not just memorise one view. Everything random is drawn from one seeded
``numpy.random.Generator``: the same seed and the same calls give the same frames.

This module imports no ROS; ``ldka_ros.nodes.sim_camera_node`` wraps it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

TABLE_TOP_Z = 0.626  # metres: upper face of pybullet_data's table/table.urdf
#: Free area of the table top where objects are placed (x half-size, y half-size), metres.
TABLE_HALF_EXTENT = (0.55, 0.33)
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ObjectSpec:
    """How to load one object kind from ``pybullet_data``."""

    urdf: str
    scale: float = 1.0
    #: Rest orientation (roll, pitch, yaw) before the random yaw about the table normal.
    euler: tuple[float, float, float] = (0.0, 0.0, 0.0)


#: Object kinds that exist in pybullet_data, scaled to plausible tabletop sizes.
CATALOGUE: dict[str, ObjectSpec] = {
    'tray': ObjectSpec('tray/traybox.urdf', 0.5),
    'teddy': ObjectSpec('teddy_vhacd.urdf', 1.6, (math.pi / 2, 0.0, 0.0)),
    'duck': ObjectSpec('duck_vhacd.urdf', 1.4, (math.pi / 2, 0.0, 0.0)),
    'soccerball': ObjectSpec('soccerball.urdf', 0.14),
    'jenga': ObjectSpec('jenga/jenga.urdf', 1.0),
    'domino': ObjectSpec('domino/domino.urdf', 2.0),
    'lego': ObjectSpec('lego/lego.urdf', 2.0),
    'mug': ObjectSpec('objects/mug.urdf', 1.0),
    'cube': ObjectSpec('cube_small.urdf', 1.2),
    'sphere': ObjectSpec('sphere_small.urdf', 1.3),
}
DEFAULT_OBJECTS = ('tray', 'teddy', 'duck', 'soccerball', 'jenga', 'mug')


def object_spec(name: str) -> ObjectSpec:
    """
    Return the spec of an object name.

    Besides the ``CATALOGUE`` names, ``random_NNN`` (000..999) names one of
    pybullet_data's random meshes, useful as clutter.
    """
    if name in CATALOGUE:
        return CATALOGUE[name]
    if name.startswith('random_') and name[7:].isdigit() and len(name) == 10:
        return ObjectSpec(f'random_urdfs/{name[7:]}/{name[7:]}.urdf', 1.0)
    raise ValueError(
        f'unknown sim object {name!r}; use one of {sorted(CATALOGUE)} or random_000..999')


@dataclass
class SimFrame:
    """One rendered view: image, ground truth and the camera that saw it."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, metres along the optical axis
    class_mask: np.ndarray  # (H, W) uint8 class ids, 0 = background
    K: np.ndarray  # (3, 3) float64 pinhole intrinsics
    #: Visible objects: name -> (x, y, w, h) box of its visible pixels.
    boxes: dict[str, Box] = field(default_factory=dict)
    time_s: float = 0.0  # scene time of the view (advanced by ``step``)


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """
    Return the pinhole K of a camera with vertical field of view ``fov_deg``.

    Square pixels and the principal point at the image centre, which is what
    pybullet's ``computeProjectionMatrixFOV`` renders.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f'image size must be positive, got {width}x{height}')
    if not 1.0 <= fov_deg <= 170.0:
        raise ValueError(f'fov_deg must be in [1, 170], got {fov_deg}')
    f = (height / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def box_of(mask: np.ndarray) -> Box | None:
    """Return the (x, y, w, h) bounding box of the True pixels, or None if there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


class TabletopScene:
    """
    A table with objects on it and a camera orbiting it, rendered on the CPU.

    ``class_map`` maps object names to class ids (default: 1, 2, ... in the order of
    ``objects``); names left out of it, the table and the floor are background (0),
    unless ``'table'`` is given an id. ``distractors`` adds that many unlabelled random
    meshes as clutter. Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        width: int = 320,
        height: int = 240,
        objects: Iterable[str] = DEFAULT_OBJECTS,
        seed: int = 0,
        fov_deg: float = 55.0,
        class_map: Mapping[str, int] | None = None,
        camera_speed: float = 0.15,
        distance_range: tuple[float, float] = (0.6, 1.05),
        elevation_deg_range: tuple[float, float] = (30.0, 65.0),
        distractors: int = 0,
        shadows: bool = True,
    ) -> None:
        import pybullet  # imported here: a 100 MB module that only the sim needs
        import pybullet_data

        self._p = pybullet
        self.objects = tuple(objects)
        if not self.objects:
            raise ValueError('a scene needs at least one object')
        if len(set(self.objects)) != len(self.objects):
            raise ValueError(f'object names must be unique, got {self.objects}')
        for name in self.objects:
            object_spec(name)
        self.class_map = self._check_class_map(class_map)
        if distance_range[0] <= 0 or distance_range[0] > distance_range[1]:
            raise ValueError(f'bad distance_range {distance_range}')
        self.width, self.height, self.fov_deg = int(width), int(height), float(fov_deg)
        self.K = intrinsics(self.width, self.height, self.fov_deg)
        self.camera_speed = float(camera_speed)
        self.distance_range = distance_range
        self.elevation_range = elevation_deg_range
        self.shadows = shadows
        self.near, self.far = 0.05, 10.0
        self._rng = np.random.default_rng(seed)
        self._data = Path(pybullet_data.getDataPath())
        self._client = pybullet.connect(pybullet.DIRECT)
        self._bodies: dict[str, int] = {}
        self._last: SimFrame | None = None
        self.time_s = 0.0
        self._travel = 0.0  # radians travelled on the orbit (camera_speed * time)
        try:
            self._load(distractors)
            self.randomize()
        except Exception:
            self.close()
            raise

    # -- construction -------------------------------------------------------------------
    def _check_class_map(self, class_map: Mapping[str, int] | None) -> dict[str, int]:
        if class_map is None:
            return {name: i + 1 for i, name in enumerate(self.objects)}
        out = {}
        for name, cid in class_map.items():
            if name != 'table' and name not in self.objects:
                raise ValueError(f'class_map names {name!r}, which is not in objects')
            if not 0 <= int(cid) <= 254:
                raise ValueError(f'class id of {name!r} must be in 0..254, got {cid}')
            out[name] = int(cid)
        return out

    def _urdf(self, rel: str) -> str:
        path = self._data / rel
        if not path.is_file():
            raise FileNotFoundError(f'{path} is missing from pybullet_data')
        return str(path)

    def _load(self, distractors: int) -> None:
        p, c = self._p, self._client
        self._floor = p.loadURDF(self._urdf('plane.urdf'), physicsClientId=c)
        self._table = p.loadURDF(self._urdf('table/table.urdf'), physicsClientId=c)
        names = list(self.objects)
        picks = self._rng.choice(1000, size=distractors, replace=False) if distractors else []
        self._distractors = [f'random_{int(i):03d}' for i in picks]
        for name in names + self._distractors:
            spec = object_spec(name)
            self._bodies[name] = p.loadURDF(
                self._urdf(spec.urdf), globalScaling=spec.scale, useFixedBase=True,
                physicsClientId=c)
        # Body id -> class id look-up table for the segmentation buffer (-1 = nothing).
        top = max([self._floor, self._table, *self._bodies.values()])
        self._lut = np.zeros(top + 2, dtype=np.uint8)
        for name, cid in self.class_map.items():
            body = self._table if name == 'table' else self._bodies[name]
            self._lut[body + 1] = cid
        self._footprint = {n: self._rest_extent(n) for n in self._bodies}

    def _rest_extent(self, name: str) -> tuple[float, float, float]:
        """Return (footprint radius, z offset to rest on the table, height) of an object."""
        p, c, body = self._p, self._client, self._bodies[name]
        quat = p.getQuaternionFromEuler(object_spec(name).euler)
        p.resetBasePositionAndOrientation(body, (0, 0, 0), quat, physicsClientId=c)
        lo, hi = p.getAABB(body, physicsClientId=c)
        radius = 0.5 * math.hypot(hi[0] - lo[0], hi[1] - lo[1])
        return radius, -lo[2], hi[2] - lo[2]

    # -- randomisation ------------------------------------------------------------------
    def randomize(self) -> None:
        """Draw new object poses, lighting, surface tints and camera phase."""
        p, c, rng = self._p, self._client, self._rng
        placed: list[tuple[float, float, float]] = []
        hx, hy = TABLE_HALF_EXTENT
        for name in sorted(self._bodies, key=lambda n: -self._footprint[n][0]):
            radius, z_off, _ = self._footprint[name]
            for _ in range(200):
                x = rng.uniform(-hx + radius, hx - radius)
                y = rng.uniform(-hy + radius, hy - radius)
                if all(math.hypot(x - px, y - py) > radius + pr + 0.01 for px, py, pr in placed):
                    break
            placed.append((x, y, radius))
            # Yaw about the table normal; recentre so the AABB centre lands on (x, y).
            roll, pitch, _ = object_spec(name).euler
            quat = p.getQuaternionFromEuler((roll, pitch, rng.uniform(-math.pi, math.pi)))
            body = self._bodies[name]
            p.resetBasePositionAndOrientation(body, (0, 0, 0), quat, physicsClientId=c)
            lo, hi = p.getAABB(body, physicsClientId=c)
            pos = (x - 0.5 * (lo[0] + hi[0]), y - 0.5 * (lo[1] + hi[1]), TABLE_TOP_Z - lo[2])
            p.resetBasePositionAndOrientation(body, pos, quat, physicsClientId=c)
        # Lighting: direction on the upper hemisphere, strength and a slight colour cast.
        azim, elev = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(25), math.radians(85))
        self._light_dir = [math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim),
                           math.sin(elev)]
        self._light_color = list(np.clip(1.0 + rng.normal(0, 0.08, 3), 0.75, 1.0))
        self._light_coeffs = (rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.75),
                              rng.uniform(0.02, 0.3))
        tint = np.clip(rng.uniform(0.6, 1.0, 3) + rng.uniform(-0.1, 0.1), 0.4, 1.0)
        p.changeVisualShape(self._table, -1, rgbaColor=[*tint, 1.0], physicsClientId=c)
        floor = np.clip(rng.uniform(0.4, 1.0, 3), 0.3, 1.0)
        p.changeVisualShape(self._floor, -1, rgbaColor=[*floor, 1.0], physicsClientId=c)
        self._azimuth0 = rng.uniform(0, 2 * math.pi)
        self._phase = rng.uniform(0, 2 * math.pi, 2)
        self._target = (rng.uniform(-0.12, 0.12), rng.uniform(-0.08, 0.08), TABLE_TOP_Z + 0.03)
        self._last = None

    def step(self, dt: float) -> None:
        """
        Advance scene time by ``dt`` seconds; the camera moves ``camera_speed * dt``.

        The orbit angle and the slow distance/elevation swings all follow the distance
        travelled on the orbit, so ``camera_speed = 0`` freezes the view exactly.
        """
        if dt < 0:
            raise ValueError(f'dt must be >= 0, got {dt}')
        self.time_s += float(dt)
        self._travel += self.camera_speed * float(dt)
        self._last = None

    # -- camera and rendering -----------------------------------------------------------
    def camera_pose(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Return (eye, target) in world coordinates at the current scene time."""
        s = self._travel
        d0, d1 = self.distance_range
        e0, e1 = self.elevation_range
        # Swings incommensurate with the orbit, so views do not repeat from orbit to orbit.
        dist = d0 + (d1 - d0) * 0.5 * (1 + math.sin(2.47 * s + self._phase[0]))
        elev = math.radians(e0 + (e1 - e0) * 0.5 * (1 + math.sin(1.53 * s + self._phase[1])))
        azim = self._azimuth0 + s
        tx, ty, tz = self._target
        eye = (tx + dist * math.cos(elev) * math.cos(azim),
               ty + dist * math.cos(elev) * math.sin(azim),
               tz + dist * math.sin(elev))
        return eye, self._target

    def render(self) -> SimFrame:
        """Render the current view: RGB, metric depth, class mask, boxes and K."""
        p, c = self._p, self._client
        eye, target = self.camera_pose()
        view = p.computeViewMatrix(eye, target, (0, 0, 1), physicsClientId=c)
        proj = p.computeProjectionMatrixFOV(
            self.fov_deg, self.width / self.height, self.near, self.far, physicsClientId=c)
        amb, dif, spec = self._light_coeffs
        _, _, rgba, zbuf, seg = p.getCameraImage(
            self.width, self.height, view, proj, lightDirection=self._light_dir,
            lightColor=self._light_color, lightDistance=3.0, shadow=int(self.shadows),
            lightAmbientCoeff=amb, lightDiffuseCoeff=dif, lightSpecularCoeff=spec,
            renderer=p.ER_TINY_RENDERER, physicsClientId=c)
        rgba = np.asarray(rgba, dtype=np.uint8).reshape(self.height, self.width, 4)
        zbuf = np.asarray(zbuf, dtype=np.float32).reshape(self.height, self.width)
        seg = np.asarray(seg, dtype=np.int64).reshape(self.height, self.width)
        # OpenGL depth buffer -> distance along the optical axis.
        depth = (self.far * self.near / (self.far - (self.far - self.near) * zbuf))
        seg = np.where((seg >= -1) & (seg < self._lut.size - 1), seg, -1)
        class_mask = self._lut[seg + 1]
        boxes = {}
        for name in self.objects:
            box = box_of(seg == self._bodies[name])
            if box is not None:
                boxes[name] = box
        frame = SimFrame(np.ascontiguousarray(rgba[..., :3]), depth.astype(np.float32),
                         class_mask, self.K.copy(), boxes, self.time_s)
        self._last = frame
        return frame

    def object_box(self, name: str) -> Box | None:
        """
        Return the (x, y, w, h) box of an object's visible pixels in the current view.

        None when it is out of view or fully hidden; renders the view if needed.
        """
        if name not in self.objects:
            raise ValueError(f'{name!r} is not in this scene; objects are {self.objects}')
        frame = self._last if self._last is not None else self.render()
        return frame.boxes.get(name)

    def object_aabb(self, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Return the world-frame axis-aligned bounds (min xyz, max xyz) of an object."""
        if name not in self._bodies:
            raise ValueError(f'{name!r} is not in this scene; objects are {self.objects}')
        lo, hi = self._p.getAABB(self._bodies[name], physicsClientId=self._client)
        return tuple(lo), tuple(hi)

    @property
    def classes(self) -> dict[int, str]:
        """Class id -> name of every labelled class (0, background, not included)."""
        return {cid: name for name, cid in self.class_map.items() if cid != 0}

    @property
    def distractors(self) -> tuple[str, ...]:
        """Names of the unlabelled clutter objects."""
        return tuple(self._distractors)

    def close(self) -> None:
        """Disconnect the physics client (idempotent)."""
        if getattr(self, '_client', None) is not None:
            try:
                self._p.disconnect(physicsClientId=self._client)
            except Exception:  # noqa: B902 - already gone is fine
                pass
            self._client = None

    def __enter__(self) -> 'TabletopScene':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
