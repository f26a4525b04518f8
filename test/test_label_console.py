# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The label console over real HTTP against a real graph (camera, segmentation, learner).

What must hold: the label the learner stores is exactly the mask the console proposed on
exactly the frame it showed; every bad request gets a JSON answer with the right status
and a reason, and the console keeps serving after all of them.
"""
from __future__ import annotations

from console_graph import Http, start_console_graph
import cv2
import numpy as np
import pytest
import ros_harness

pytestmark = [pytest.mark.ros]

TOKEN = 'console-test-token'


def _png_mask(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.shape[2] == 4, 'proposal is not an RGBA PNG'
    return image[:, :, 3] > 0


@pytest.fixture
def graph(tmp_path, camvid_root, ros_launcher, ros_node, ros_namespace):
    """Start the console graph, token required; stop its camera stream after the test."""
    graph = start_console_graph(tmp_path, camvid_root, ros_launcher, ros_node, ros_namespace,
                                token=TOKEN)
    yield graph
    graph.stop()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_console_stores_the_proposed_mask_of_the_shown_frame(graph, tmp_path, ros_launcher):
    http = graph.http
    snap = http.ok('/api/snapshot')
    assert (snap['height'], snap['width']) == graph.frames[0][0].shape[:2]
    status, jpeg = http.request(f'/api/frame/{snap["stamp"]}.jpg?layers=image,overlay,'
                                'margin')
    assert status == 200 and jpeg[:2] == b'\xff\xd8', status
    shown = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape[:2] == graph.frames[0][0].shape[:2]

    proposal = http.ok('/api/propose', {'stamp': snap['stamp'], 'box': graph.car_box})
    status, png = http.request(proposal['png'])
    assert status == 200
    proposed = _png_mask(png)
    car = graph.car
    assert proposal['pixels'] == int(proposed.sum()) > 0
    assert _iou(proposed, car) > 0.4, 'the box proposal misses the car'

    stored = http.ok('/api/accept', {'proposal_id': proposal['proposal_id'],
                                     'class_name': 'car'})
    assert stored['accepted'] and stored['frames_for_class'] == 1, stored
    frame_id = stored['frame_id']
    label = cv2.imread(str(tmp_path / 'frames' / 'labels' / f'{frame_id}.png'),
                       cv2.IMREAD_UNCHANGED)
    image = cv2.imread(str(tmp_path / 'frames' / 'images' / f'{frame_id}.png'))
    np.testing.assert_array_equal(label > 0, proposed)  # exactly what was shown
    np.testing.assert_array_equal(image[:, :, ::-1], graph.frames[0][0])

    classes = http.ok('/api/classes')
    assert {'name': 'car', 'frames': 1} in classes['pending']
    labels = http.ok('/api/labels')['labels']
    assert [x['frame_id'] for x in labels] == [frame_id]
    status, thumb = http.request(labels[0]['thumb'])
    assert status == 200 and thumb[:2] == b'\xff\xd8'
    # A second label, then that one frame deleted: the first stays.
    again = http.ok('/api/propose', {'stamp': http.ok('/api/snapshot')['stamp'],
                                     'box': graph.car_box})
    second = http.ok('/api/accept', {'proposal_id': again['proposal_id'],
                                     'class_name': 'car'})['frame_id']
    gone = http.ok('/api/remove_frame', {'frame_id': second})
    assert gone['class_name'] == 'car' and gone['frames_left'] == 1, gone
    assert not (tmp_path / 'frames' / 'frames' / f'{second}.json').exists()
    assert (tmp_path / 'frames' / 'trash' / f'frame-{second}' / 'images' /
            f'{second}.png').is_file()
    assert [x['frame_id'] for x in http.ok('/api/labels')['labels']] == [frame_id]
    assert {'name': 'car', 'frames': 1} in http.ok('/api/classes')['pending']
    for bad, words in ((second, 'no labelled frame'), ('../classes', 'invalid frame id')):
        status, message = _error(http, '/api/remove_frame', {'frame_id': bad})
        assert status == 422 and words in message, (bad, status, message)

    # What to label next: the learner ranks frames by the segmentation node's margin
    # map; a suggestion names a remembered frame and a box that can be proposed on.
    # (the console may have missed a suggested frame under load; those are listed last)
    ros_harness.wait_until(
        lambda: any(s['available'] for s in http.ok('/api/suggestions')['suggestions']),
        60.0, 'a label suggestion on a frame the console holds', ros_launcher, interval=0.5)
    best = http.ok('/api/suggestions')['suggestions'][0]
    assert 0.0 < best['unsure_fraction'] <= 1.0 and best['available'], best
    bx, by, bw, bh = best['box']
    assert bw > 0 and bh > 0 and bx + bw <= snap['width'] and by + bh <= snap['height']
    assert http.ok('/api/propose', {'stamp': best['stamp'], 'box': best['box']})['pixels']

    versions = http.ok('/api/versions')
    assert versions['active_version'] == 'v0001'
    assert [v['id'] for v in versions['versions']] == ['v0001']

    # Learn, then cancel: the page's Cancel stops the learner's job, nothing is published.
    job = http.ok('/api/learn', {'classes': ['car'], 'iterations': 100000})
    assert job['state'] == 'running', job
    ros_harness.wait_until(lambda: http.ok('/api/job')['phase'] == 'training', 180.0,
                           'the training phase', ros_launcher, interval=0.5)
    assert _error(http, '/api/learn', {})[0] == 422  # one goal at a time
    http.ok('/api/cancel', {})
    ros_harness.wait_until(lambda: http.ok('/api/job')['state'] == 'canceled', 120.0,
                           'the cancelled job', ros_launcher, interval=0.5)
    assert [v['id'] for v in http.ok('/api/versions')['versions']] == ['v0001']

    removed = http.ok('/api/remove_class', {'name': 'car'})
    assert removed['frames_removed'] == 1, removed
    assert http.ok('/api/classes')['pending'] == []
    assert http.ok('/api/labels')['labels'] == []
    ros_launcher.check_alive()


def _error(http: Http, path: str, body=None, raw=None, headers=None) -> tuple[int, str]:
    status, data = http.request(path, body, raw=raw, headers=headers)
    assert isinstance(data, dict) and data.get('error'), f'{path}: not a JSON error: {data!r}'
    return status, data['error']


def test_console_refuses_bad_requests_with_reasons_and_keeps_serving(graph, ros_launcher):
    http = graph.http
    stamp = http.ok('/api/snapshot')['stamp']
    anonymous = Http(graph.url)
    assert _error(anonymous, '/api/snapshot')[0] == 401
    assert _error(anonymous, '/api/snapshot', headers={'X-Console-Token': 'wrong'})[0] \
        == 401
    assert anonymous.request(f'/api/snapshot?token={TOKEN}')[0] == 200
    assert anonymous.request('/api/snapshot', headers={
        'Authorization': f'Bearer {TOKEN}'})[0] == 200

    cases = [
        ('/api/propose', None, b'{"stamp": ', 400, 'not JSON'),
        ('/api/propose', [1, 2], None, 400, 'JSON object'),
        ('/api/propose', None, b' ' * (2 << 20), 413, 'too large'),
        ('/api/propose', {'stamp': stamp, 'box': [1, 2, 3]}, None, 422, 'box'),
        ('/api/propose', {'stamp': stamp, 'box': [0, 0, 1e309, 5]}, None, 422, 'box'),
        ('/api/propose', {'stamp': stamp, 'fg_points': [[5000, 3]]}, None, 422,
         'outside'),
        ('/api/propose', {'stamp': stamp, 'bg_points': [[5, 3]]}, None, 422, 'fg_points'),
        ('/api/propose', {'stamp': stamp, 'fg_points': [[1, 1]] * 65}, None, 422,
         'at most'),
        ('/api/propose', {'stamp': 'yesterday', 'box': [1, 1, 9, 9]}, None, 422, 'stamp'),
        ('/api/propose', {'stamp': '12345', 'box': [1, 1, 9, 9]}, None, 404,
         'no longer remembered'),
        ('/api/accept', {'proposal_id': 'nope', 'class_name': 'car'}, None, 404,
         'no proposal'),
        ('/api/accept', {'proposal_id': 'nope', 'class_name': 'bad name!'}, None, 422,
         'invalid class name'),
        ('/api/learn', {'iterations': -3}, None, 422, 'iterations'),
        ('/api/learn', {}, None, 422, 'nothing to learn'),
        ('/api/cancel', {}, None, 422, 'no learning goal'),
        ('/api/rollback', {'version_id': 'v0099'}, None, 422, 'v0099'),
        ('/api/remove_class', {'name': 'never_labelled'}, None, 422, 'never_labelled'),
        (f'/api/frame/{stamp}.jpg?layers=x-ray', None, None, 422, 'layer'),
        ('/api/does/not/exist', None, None, 404, 'no such API route'),
    ]
    for path, body, raw, want, words in cases:
        status, message = _error(http, path, body, raw)
        assert status == want and words in message, (path, body, status, message)
    assert http.request('/api/snapshot')[0] == 200  # still serving
    assert 'console at http://127.0.0.1:' in ros_launcher.logs()  # localhost by default
    ros_launcher.check_alive()
