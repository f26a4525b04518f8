# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The robot's model follower on real registries, with the chunk server called directly.

What the ROS test cannot show cheaply: the order of decisions. A pinned robot fetches its
pin and ignores announcements; a fleet rollback is served from the cache without a byte
fetched; a refused download is retried with back-off and swaps only once it is good.
"""
from __future__ import annotations

from dataclasses import replace
import threading
import time

from ldka_ros.nodes.model_fetcher import ModelFollower
from ldka_ros.registry import ModelRegistry
from ldka_ros.registry.fetch import ChunkServer, source_of
import pytest
from test_fetch import build_source


@pytest.fixture(scope='module')
def source(tmp_path_factory, camvid_root):
    return ModelRegistry(build_source(tmp_path_factory.mktemp('follow_source'), camvid_root))


class Robot:
    """A follower with a swap that serves at once, and a reader that can damage chunks."""

    def __init__(self, cache: ModelRegistry, source: ModelRegistry, pin: str = '') -> None:
        self.server = ChunkServer(source)
        self.source = source
        self.cache = cache
        self.served = ''
        self.swaps: list[str] = []
        self.damage = False
        self.artefact_bytes = 0
        self.changed = threading.Event()
        self.follower = ModelFollower(cache, self.read, self.swap, lambda: self.served,
                                      pin=pin, retry_s=0.1, retry_max_s=0.2,
                                      log=lambda _text: None)

    def read(self, version_id, sha256, offset, max_length):
        chunk = self.server.read(version_id, sha256, offset, max_length)
        if sha256:
            self.artefact_bytes += len(chunk.data)
            if self.damage:
                return replace(chunk, data=bytes(len(chunk.data)))
        return chunk

    def swap(self, local_id: str) -> None:
        self.swaps.append(local_id)
        self.served = local_id
        self.changed.set()

    def serving_source(self) -> str:
        return source_of(self.cache.get(self.served)) if self.served else ''

    def announce(self, version_id: str) -> None:
        digests = {k: e.sha256 for k, e in self.source.get(version_id).artefacts.items()}
        self.follower.announce(version_id, digests)

    def wait_serving(self, version_id: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.serving_source() != version_id:
            assert time.monotonic() < deadline, (self.swaps, self.follower.state)
            self.changed.wait(0.1)
            self.changed.clear()


@pytest.fixture
def robot(tmp_path, source):
    made = []

    def make(pin: str = '') -> Robot:
        made.append(Robot(ModelRegistry(tmp_path / f'cache{len(made)}', create=True),
                          source, pin))
        return made[-1]

    yield make
    for item in made:
        item.follower.close()


def test_the_active_version_then_announcements_then_a_rollback_from_the_cache(robot):
    r = robot()
    r.wait_serving('v0001')  # asked for the learner's active version at start
    r.announce('v0001')
    values = r.follower.values(r.serving_source())
    assert values['lagging'] is False and values['fleet_version'] == 'v0001'
    r.announce('v0002')
    r.wait_serving('v0002')
    fetched = r.artefact_bytes
    r.announce('v0001')  # fleet rollback
    r.wait_serving('v0001')
    assert r.artefact_bytes == fetched, 'the rollback target came from the cache'
    assert len(r.swaps) == 3


def test_a_pinned_robot_fetches_its_pin_and_ignores_announcements(robot):
    r = robot(pin='v0002')
    r.announce('v0001')
    r.wait_serving('v0002')
    time.sleep(0.5)
    assert r.swaps == [r.served]
    values = r.follower.values(r.serving_source())
    assert values['lagging'] is True and values['lag_reason'] == 'pinned to v0002'


def test_a_refused_download_is_retried_and_swapped_only_when_good(robot):
    r = robot()
    r.damage = True
    deadline = time.monotonic() + 30.0
    while r.follower.state.stage != 'refused':
        assert time.monotonic() < deadline, r.follower.state
        time.sleep(0.05)
    r.announce('v0001')
    values = r.follower.values(r.serving_source())
    assert values['lagging'] is True and values['lag_reason'].startswith('refused')
    assert 'sha256' in values['lag_reason'] and r.swaps == []
    assert r.cache.list_versions() == []
    r.damage = False
    r.wait_serving('v0001')
    assert r.follower.values(r.serving_source())['lagging'] is False
