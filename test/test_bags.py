# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The user's own recordings: rosbag2 files and compressed camera images.

The test writes real rosbag2 files (MCAP and sqlite3, with the ``rosbags`` writer) of
real CamVid frames: a raw rgb8 topic, bgr8 and mono8 topics, CompressedImage jpeg and
png topics, a damaged topic and a non-image topic. It then checks the ROS-free reader,
``ldka frames from-bag`` / ``add-labelled``, the replay camera playing the bag, and the
segmentation and learner nodes fed CompressedImage (image_transport ``compressed``).
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

REPO_ROOT = __import__('pathlib').Path(__file__).resolve().parents[1]
#: Frames in the bag, their size, spacing and first stamp.
COUNT = 6
SIZE = (180, 240)
GAP_NS = 100_000_000
T0_NS = 1_700_000_000 * 1_000_000_000
FRAME_ID = 'cam_optical'
RAW, COMPRESSED = '/cam/image_raw', '/cam/image_raw/compressed'
BGR, MONO, PNG, DAMAGED = '/cam/bgr', '/cam/mono', '/cam/png/compressed', '/cam/damaged'
#: Project class ids (CamVid's stored id + 1); the cached base model knows 1..8.
CAR, PEDESTRIAN, BICYCLIST = 9, 10, 11
NAMES = ['background', 'sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign_symbol',
         'fence', 'car', 'pedestrian', 'bicyclist']


def _camvid_frames(camvid_root):
    """Return COUNT (rgb, project-id label) pairs of CamVid val frames showing a car."""
    from ldka_ros.learning.data import read_label, read_rgb

    out = []
    for path in sorted((camvid_root / 'val' / 'images').glob('*.jpg')):
        stored = read_label(camvid_root / 'val' / 'labels' / f'{path.stem}.png')
        if np.mean(stored == CAR - 1) < 0.03:
            continue
        labels = np.where(stored == 11, 255, stored.astype(np.int32) + 1).astype(np.uint8)
        rgb = cv2.resize(read_rgb(path), SIZE[::-1], interpolation=cv2.INTER_AREA)
        out.append((rgb, cv2.resize(labels, SIZE[::-1], interpolation=cv2.INTER_NEAREST)))
        if len(out) == COUNT:
            return out
    pytest.skip(f'fewer than {COUNT} CamVid val frames with a car')


def _write_bag(path, storage, frames) -> dict:
    """Write the test bag; return the jpeg and png bytes of each frame."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_typestore, Stores

    store = get_typestore(Stores.ROS2_JAZZY)
    image_t = store.types['sensor_msgs/msg/Image']
    compressed_t = store.types['sensor_msgs/msg/CompressedImage']
    header_t = store.types['std_msgs/msg/Header']
    time_t = store.types['builtin_interfaces/msg/Time']
    string_t = store.types['std_msgs/msg/String']
    encoded = {'jpeg': [], 'png': []}
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {t: writer.add_connection(t, image_t.__msgtype__, typestore=store)
                 for t in (RAW, BGR, MONO)}
        conns.update({t: writer.add_connection(t, compressed_t.__msgtype__, typestore=store)
                      for t in (COMPRESSED, PNG, DAMAGED)})
        chatter = writer.add_connection('/chatter', string_t.__msgtype__, typestore=store)

        def put(topic, msg, stamp):
            writer.write(conns[topic], stamp, store.serialize_cdr(msg, msg.__msgtype__))

        for i, (rgb, _) in enumerate(frames):
            stamp = T0_NS + i * GAP_NS
            header = header_t(stamp=time_t(sec=stamp // 10 ** 9, nanosec=stamp % 10 ** 9),
                              frame_id=FRAME_ID)
            h, w = rgb.shape[:2]
            for topic, enc, pixels in ((RAW, 'rgb8', rgb), (BGR, 'bgr8', rgb[:, :, ::-1]),
                                       (MONO, 'mono8', rgb[:, :, 1])):
                channels = 1 if pixels.ndim == 2 else 3
                put(topic, image_t(header=header, height=h, width=w, encoding=enc,
                                   is_bigendian=0, step=w * channels,
                                   data=np.ascontiguousarray(pixels).reshape(-1)), stamp)
            for kind, ext in (('jpeg', '.jpg'), ('png', '.png')):
                ok, data = cv2.imencode(ext, rgb[:, :, ::-1])
                assert ok
                encoded[kind].append(data.reshape(-1))
            put(COMPRESSED, compressed_t(header=header, format='rgb8; jpeg compressed bgr8',
                                         data=encoded['jpeg'][-1]), stamp)
            put(PNG, compressed_t(header=header, format='png', data=encoded['png'][-1]), stamp)
            writer.write(chatter, stamp, store.serialize_cdr(
                string_t(data=f'frame {i}'), string_t.__msgtype__))
        # The damaged topic: good, truncated record, bytes that are no image, good.
        good = [compressed_t(header=header_t(stamp=time_t(sec=1, nanosec=i), frame_id='d'),
                             format='jpeg', data=encoded['jpeg'][i]) for i in range(2)]
        junk = compressed_t(header=header_t(stamp=time_t(sec=1, nanosec=5), frame_id='d'),
                            format='jpeg', data=np.frombuffer(b'not a jpeg', np.uint8))
        raw0 = store.serialize_cdr(good[0], good[0].__msgtype__)
        writer.write(conns[DAMAGED], T0_NS, raw0)
        writer.write(conns[DAMAGED], T0_NS + 1, raw0[:12])
        put(DAMAGED, junk, T0_NS + 2)
        put(DAMAGED, good[1], T0_NS + 3)
    return encoded


@pytest.fixture(scope='module')
def recording(tmp_path_factory, camvid_root):
    """Return (frames, encoded, {'mcap': bag dir, 'sqlite3': bag dir})."""
    frames = _camvid_frames(camvid_root)
    root = tmp_path_factory.mktemp('bags')
    bags, encoded = {}, None
    for storage in ('mcap', 'sqlite3'):
        bags[storage] = root / f'bag_{storage}'
        encoded = _write_bag(bags[storage], storage, frames)
    return frames, encoded, bags


def _jpeg_rgb(data) -> np.ndarray:
    return cv2.imdecode(np.asarray(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


# -- the ROS-free reader ---------------------------------------------------------------
@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_reader_lists_topics_and_returns_the_recorded_pixels(recording, storage):
    from ldka_ros.imaging.bags import BagImageReader

    frames, encoded, bags = recording
    single = next(bags[storage].glob('*.mcap' if storage == 'mcap' else '*.db3'))
    for path in (bags[storage], single):  # the bag directory and its single storage file
        with BagImageReader(path) as bag:
            topics = {t.name: (t.msgtype.split('/')[-1], t.count) for t in bag.topics()}
            assert topics == {RAW: ('Image', COUNT), BGR: ('Image', COUNT),
                              MONO: ('Image', COUNT), COMPRESSED: ('CompressedImage', COUNT),
                              PNG: ('CompressedImage', COUNT), DAMAGED: ('CompressedImage', 4)}
            raw = list(bag.frames(RAW))
            assert [f.stamp_ns for f in raw] == [T0_NS + i * GAP_NS for i in range(COUNT)]
            assert {f.frame_id for f in raw} == {FRAME_ID}
            for got, (rgb, _) in zip(raw, frames):
                np.testing.assert_array_equal(got.rgb, rgb)
            for got, (rgb, _) in zip(bag.frames(BGR), frames):
                np.testing.assert_array_equal(got.rgb, rgb)
            for got, (rgb, _) in zip(bag.frames(MONO), frames):
                np.testing.assert_array_equal(got.rgb, np.repeat(rgb[:, :, 1:2], 3, axis=2))
            for got, (rgb, _) in zip(bag.frames(PNG), frames):
                np.testing.assert_array_equal(got.rgb, rgb)
            jpeg = list(bag.frames(COMPRESSED))
            assert len(jpeg) == COUNT and bag.skipped == 0
            for got, (rgb, _) in zip(jpeg, frames):
                assert got.rgb.shape == rgb.shape and got.rgb.dtype == np.uint8
                assert np.abs(got.rgb.astype(int) - rgb).mean() < 4.0  # jpeg is lossy
            every = list(bag.frames(RAW, every=2, max_frames=2))
            assert [f.stamp_ns for f in every] == [T0_NS, T0_NS + 2 * GAP_NS]


def test_reader_skips_damaged_messages_and_names_what_exists(recording, tmp_path, caplog):
    from ldka_ros.imaging.bags import BagError, BagImageReader

    _, encoded, bags = recording
    with BagImageReader(bags['mcap']) as bag:
        with caplog.at_level('WARNING'):
            damaged = list(bag.frames(DAMAGED))
        assert [f.stamp_ns for f in damaged] == [10 ** 9, 10 ** 9 + 1]
        np.testing.assert_array_equal(damaged[1].rgb, _jpeg_rgb(encoded['jpeg'][1]))
        assert bag.skipped == 2
        assert 'could not be decoded' in bag.last_problem
        assert 'does not deserialise' in caplog.text and 'cannot be decoded' in caplog.text
        with pytest.raises(BagError, match=f'no topic /nope; image topics: .*{RAW} '):
            bag.topic('/nope')
        with pytest.raises(BagError, match='carries std_msgs/msg/String, not an image'):
            list(bag.frames('/chatter'))
        with pytest.raises(BagError, match='has 6 image topics'):
            bag.topic('')
    with pytest.raises(BagError, match='does not exist'):
        BagImageReader(tmp_path / 'missing.mcap')
    (tmp_path / 'plain').mkdir()
    with pytest.raises(BagError, match='not a rosbag2 bag'):
        BagImageReader(tmp_path / 'plain')
    (tmp_path / 'broken.mcap').write_bytes(b'\x89MCAP0\r\n' + b'\0' * 64)
    with pytest.raises(BagError, match='cannot open bag'):
        BagImageReader(tmp_path / 'broken.mcap').open_bag()


def test_compressed_decoding_refuses_what_is_not_a_colour_image():
    from ldka_ros.imaging.pixels import decode_compressed, message_rgb

    with pytest.raises(ValueError, match='holds no bytes'):
        decode_compressed('jpeg', b'')
    with pytest.raises(ValueError, match='could not be decoded'):
        decode_compressed('jpeg', b'\xff\xd8\xff garbage')
    with pytest.raises(ValueError, match='compressed depth'):
        decode_compressed('16UC1; compressedDepth png', cv2.imencode('.png', np.zeros(
            (4, 4), np.uint16))[1].tobytes())
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    png = cv2.imencode('.png', rgb[:, :, ::-1])[1]

    class Compressed:
        format = 'png'  # noqa: A003 - the ROS field name
        data = png.tobytes()

    np.testing.assert_array_equal(message_rgb(Compressed()), rgb)


# -- ldka frames -------------------------------------------------------------------------
def _ldka(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'ldka_ros.cli.main', *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_frames_from_bag_writes_frames_named_by_stamp(recording, tmp_path):
    frames, encoded, bags = recording
    out = tmp_path / 'extract'
    run = _ldka('frames', 'from-bag', str(bags['sqlite3']), '--topic', RAW, '--every', '2',
                '--max', '2', '--out', str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    files = sorted((out / 'images').iterdir())
    assert [p.name for p in files] == [f'{T0_NS:019d}.png', f'{T0_NS + 2 * GAP_NS:019d}.png']
    for path, index in zip(files, (0, 2)):
        np.testing.assert_array_equal(cv2.imread(str(path))[:, :, ::-1], frames[index][0])
    assert 'wrote 2 frames' in run.stdout

    run = _ldka('frames', 'from-bag', str(bags['mcap']), '--topic', COMPRESSED, '--out',
                str(tmp_path / 'jpeg'), '--format', 'jpg')
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(list((tmp_path / 'jpeg' / 'images').glob('*.jpg'))) == COUNT

    run = _ldka('frames', 'from-bag', str(bags['mcap']), '--topic', '/camera/missing',
                '--out', str(tmp_path / 'none'))
    assert run.returncode == 2
    assert 'no topic /camera/missing' in run.stderr and RAW in run.stderr
    assert 'Traceback' not in run.stderr

    run = _ldka('frames', 'topics', str(bags['mcap']))
    assert run.returncode == 0 and f'{COMPRESSED}\tsensor_msgs/msg/CompressedImage\t6' in \
        run.stdout


def _labelled_folder(root, frames, masks) -> None:
    (root / 'images').mkdir(parents=True)
    (root / 'masks').mkdir()
    for i, ((rgb, _), mask) in enumerate(zip(frames, masks)):
        cv2.imwrite(str(root / 'images' / f'f{i}.png'), rgb[:, :, ::-1])
        if mask is not None:
            cv2.imwrite(str(root / 'masks' / f'f{i}.png'), mask)


def test_frames_add_labelled_stores_frames_with_the_learners_class_ids(
        recording, tmp_path, camvid_root, capsys):
    from ldka_ros.cli.main import main
    from ldka_ros.learning.classes import ClassRegistry
    from ldka_ros.learning.data import read_label, read_rgb
    from ldka_ros.learning.frame_store import FrameStore
    from test_learning_job import base_registry

    frames = recording[0]
    registry = base_registry(tmp_path / 'registry', camvid_root)
    store_root = tmp_path / 'frames'
    common = ['--frame-store', str(store_root), '--registry', str(registry)]

    # Class-id masks of classes the model knows (car and the others folded to 0).
    known = [np.where((labels >= CAR) & (labels != 255), 0, labels).astype(np.uint8)
             for _, labels in frames[:2]]
    _labelled_folder(tmp_path / 'ids', frames[:2], known)
    assert main(['frames', 'add-labelled', str(tmp_path / 'ids'), *common]) == 0
    store = FrameStore(store_root)
    records = store.frames()
    expected = sorted((i, int(v)) for i, m in enumerate(known)
                      for v in np.unique(m) if v not in (0, 255))
    assert sorted((int(r.source[len('offline:f'):-4]), r.class_id) for r in records) == \
        expected
    for record in records:
        assert record.class_name == NAMES[record.class_id]
        index = int(record.source[len('offline:f'):-4])
        np.testing.assert_array_equal(read_rgb(store.image_path(record.frame_id)),
                                      frames[index][0])
        label = read_label(store.label_path(record.frame_id))
        np.testing.assert_array_equal(label == record.class_id,
                                      known[index] == record.class_id)

    # 0/255 masks of a new class: it takes the lowest free slot after the model's classes.
    cars = [np.where(labels == CAR, 255, 0).astype(np.uint8) for _, labels in frames[2:5]]
    cars[2] = cars[2][:-4]  # wrong size: refused, the others are stored
    _labelled_folder(tmp_path / 'cars', frames[2:5], cars + [None])
    capsys.readouterr()
    assert main(['frames', 'add-labelled', str(tmp_path / 'cars'), '--class', 'car',
                 *common]) == 0
    out = capsys.readouterr()
    assert 'added 2 frames' in out.out and f'car (id {CAR}): 2' in out.out
    assert 'f2.png: mask is 240x176, image 240x180' in out.err
    cars_stored = store.frames(class_names=['car'])
    assert len(cars_stored) == 2 and {r.class_id for r in cars_stored} == {CAR}
    assert ClassRegistry.load(store_root / 'classes.json').get('car').id == CAR

    # An id mask naming an id no model or label knows is refused with the known ones.
    unknown = [np.where(frames[5][1] == PEDESTRIAN, PEDESTRIAN, 0).astype(np.uint8)]
    unknown[0][:8, :8] = PEDESTRIAN
    _labelled_folder(tmp_path / 'unknown', frames[5:], unknown)
    assert main(['frames', 'add-labelled', str(tmp_path / 'unknown'), *common]) == 2
    err = capsys.readouterr().err
    assert f'class ids [{PEDESTRIAN}] are not known classes' in err and f'{CAR}=car' in err
    assert len(store) == len(records) + 2


# -- nodes -------------------------------------------------------------------------------
@pytest.mark.ros
def test_replay_camera_plays_raw_and_compressed_topics_of_a_bag(recording, ros_launcher,
                                                                ros_node):
    from ldka_ros.nodes.image_conversion import image_to_numpy
    from ldka_ros.nodes.qos import reliable_qos
    import ros_harness
    from sensor_msgs.msg import CameraInfo, Image

    frames, encoded, bags = recording
    ns = ros_launcher.namespace
    # Recorded timing (0.1 s apart) although rate_hz says 1 Hz; frame_id '' = recorded.
    ros_launcher.start_module('jpeg', 'ldka_ros.nodes.replay_camera_node', params={
        'bag': str(bags['mcap']), 'topic': COMPRESSED, 'timing': 'stamps', 'rate_hz': 1.0,
        'frame_id': '', 'qos': 'reliable'})
    once = ros_launcher.start_module('once', 'ldka_ros.nodes.replay_camera_node', params={
        'bag': str(next(bags['sqlite3'].glob('*.db3'))), 'topic': RAW, 'rate_hz': 20.0,
        'loop': False, 'qos': 'reliable'}, remaps={'__node': 'once'})
    images = ros_harness.TopicCollector(ros_node.node, Image, f'{ns}/replay_camera/image_raw',
                                        reliable_qos(50))
    infos = ros_harness.TopicCollector(ros_node.node, CameraInfo,
                                       f'{ns}/replay_camera/camera_info', reliable_qos(50))
    raw = ros_harness.TopicCollector(ros_node.node, Image, f'{ns}/once/image_raw',
                                     reliable_qos(50))
    got = images.wait_for(COUNT + 3, timeout=40, launcher=ros_launcher)
    decoded = [_jpeg_rgb(data) for data in encoded['jpeg']]
    order = []
    for msg in got:
        assert (msg.encoding, msg.header.frame_id) == ('rgb8', FRAME_ID)
        pixels = image_to_numpy(msg)
        matches = [i for i, d in enumerate(decoded) if np.array_equal(pixels, d)]
        assert len(matches) == 1, 'a published frame is not one of the recorded ones'
        order.append(matches[0])
    assert all((b - a) % COUNT == 1 for a, b in zip(order, order[1:])), order
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in got]
    gaps = np.diff(stamps)
    assert np.median(gaps) < 0.4, f'the recorded 0.1 s spacing was not kept: {gaps}'
    assert infos.wait_for(1, timeout=10, launcher=ros_launcher)[0].width == SIZE[1]

    ros_harness.wait_until(lambda: 'replay finished after 6 frames' in once.log_text(), 20,
                           'the non-looping bag replay to finish', ros_launcher)
    assert once.alive()  # finishing is not exiting
    for msg in raw.messages:  # whatever arrived after discovery is exact
        pixels = image_to_numpy(msg)
        assert any(np.array_equal(pixels, rgb) for rgb, _ in frames)


class _CompressedCamera:
    """Publish one jpeg frame as CompressedImage at 20 Hz from the test process."""

    def __init__(self, node, topic: str, jpeg: np.ndarray) -> None:
        from ldka_ros.nodes.qos import sensor_qos
        from sensor_msgs.msg import CompressedImage

        self.pub = node.create_publisher(CompressedImage, topic, sensor_qos())
        self.msg = CompressedImage(format='jpeg', data=jpeg.tobytes())
        self.msg.header.frame_id = FRAME_ID
        self.sent: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            self.msg.header.stamp.sec, self.msg.header.stamp.nanosec = \
                int(now), int((now % 1) * 1e9)
            self.sent.append((self.msg.header.stamp.sec, self.msg.header.stamp.nanosec))
            self.pub.publish(self.msg)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


@pytest.mark.ros
def test_segmentation_and_learner_take_compressed_images(recording, tmp_path, camvid_root,
                                                         ros_launcher, ros_node):
    from ldka_ros.cli.main import main
    from ldka_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ldka_ros.inference.pipeline import SegmentationPipeline
    from ldka_ros.learning.frame_store import FrameStore
    from ldka_ros.nodes.image_conversion import image_to_numpy
    from ldka_ros.registry import ModelRegistry
    import ros_harness
    from sensor_msgs.msg import Image
    from test_learner_node import _label_request, _services
    from test_learning_job import base_registry

    frames, encoded, _ = recording
    ns = ros_launcher.namespace
    registry = ModelRegistry(base_registry(tmp_path / 'registry', camvid_root))
    # Offline labels first: 'car' gets its id from the command line.
    cars = [np.where(labels == CAR, 255, 0).astype(np.uint8) for _, labels in frames[:1]]
    _labelled_folder(tmp_path / 'cars', frames[:1], cars)
    assert main(['frames', 'add-labelled', str(tmp_path / 'cars'), '--class', 'car',
                 '--frame-store', str(tmp_path / 'frames'), '--registry',
                 str(registry.root)]) == 0

    rgb = _jpeg_rgb(encoded['jpeg'][3])
    camera = _CompressedCamera(ros_node.node, f'{ns}/camera/image_raw/compressed',
                               encoded['jpeg'][3])
    try:
        masks = ros_harness.TopicCollector(ros_node.node, Image, f'{ns}/segmentation/mask', 10)
        seg_params = {
            'registry_path': str(registry.root), 'backend': 'onnxruntime', 'threads': 1,
            'image_transport': 'compressed', 'max_rate_hz': 4.0,
            'model_version_topic': f'{ns}/learner/model_version',
            'rollback_service': f'{ns}/learner/rollback'}
        seg = ros_launcher.start_module('segmentation', 'ldka_ros.nodes.segmentation_node',
                                        params=seg_params,
                                        remaps={'image': f'{ns}/camera/image_raw'})
        # The learner's camera topic is image_transport's <image>/compressed as well.
        ros_launcher.start_module('learner', 'ldka_ros.nodes.learner_node', params={
            'registry_path': str(registry.root), 'frame_store_path': str(tmp_path / 'frames'),
            'image_transport': 'compressed', 'device': 'cpu', 'job_threads': 1},
            remaps={'image': f'{ns}/camera/image_raw'})
        srv = _services(ros_node, ns, ros_launcher)
        got = masks.wait_for(2, timeout=60.0, launcher=ros_launcher)
        backend = OnnxRuntimeBackend(registry.artefact_path('v0001', 'onnx'), providers='cpu',
                                     intra_op_threads=1).load()
        try:
            expected = SegmentationPipeline(backend).process(rgb).class_ids
        finally:
            backend.release()
        assert len(np.unique(expected)) >= 2
        for mask in got:
            assert mask.encoding == 'mono8' and mask.header.frame_id == FRAME_ID
            assert (mask.header.stamp.sec, mask.header.stamp.nanosec) in set(camera.sent)
            assert np.mean(image_to_numpy(mask) == expected) > 0.999
        # Bytes that are no image: counted and logged as bad frames, the node keeps going.
        good = camera.msg.data
        camera.msg.data = b'\xff\xd8\xff not a jpeg'
        ros_harness.wait_until(lambda: 'bad camera frame' in seg.log_text(), 20,
                               'the undecodable frame to be reported', ros_launcher)
        assert 'could not be decoded' in seg.log_text()
        camera.msg.data = good
        seen = len(masks.messages)
        masks.wait_for(seen + 2, timeout=30.0, launcher=ros_launcher)

        # The learner labels its latest (compressed) frame: the known id for 'car', the
        # next free one for a new class, exactly as the command line allocates them.
        car_mask = frames[3][1] == CAR
        ped_mask = np.zeros(SIZE, bool)
        ped_mask[60:120, 100:130] = True
        replies = {}
        for name, mask in (('car', car_mask), ('pedestrian', ped_mask)):
            reply = ros_harness.call_service(srv['label_object'],
                                             _label_request(name, mask=mask), timeout=30.0)
            assert reply.accepted, reply.message
            replies[name] = reply
        assert (replies['car'].class_id, replies['pedestrian'].class_id) == (CAR, PEDESTRIAN)
        store = FrameStore(tmp_path / 'frames')
        stored, stored_mask = store.load(replies['car'].frame_id)
        np.testing.assert_array_equal(stored, rgb)
        np.testing.assert_array_equal(stored_mask, car_mask)
    finally:
        camera.stop()
    # And a class named offline after the learner's pedestrian takes the next slot.
    _labelled_folder(tmp_path / 'bikes', frames[4:5], [np.where(
        frames[4][1] == CAR, 255, 0).astype(np.uint8)])
    assert main(['frames', 'add-labelled', str(tmp_path / 'bikes'), '--class', 'bicyclist',
                 '--frame-store', str(tmp_path / 'frames'), '--registry',
                 str(registry.root)]) == 0
    assert {r.class_name: r.class_id for r in FrameStore(tmp_path / 'frames').frames()} == {
        'car': CAR, 'pedestrian': PEDESTRIAN, 'bicyclist': BICYCLIST}
    codes = ros_launcher.stop_all()
    assert codes['segmentation'] == 0 and codes['learner'] == 0, ros_launcher.logs()
