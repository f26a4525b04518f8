# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Model versions in chunks between two real registries, without ROS.

The source is the cached tiny base model (a real trained checkpoint and its ONNX graph,
24 MB) plus a child version; the fetcher pulls them chunk by chunk through
``ChunkServer.read`` into an empty cache registry. Interruptions, corrupted chunks and a
damaged source file are made by wrapping the reader or flipping a byte on disk.
"""
from __future__ import annotations

from dataclasses import replace
import shutil

from ldka_ros.registry import ModelRegistry
from ldka_ros.registry.fetch import (Backoff, ChunkServer, CorruptTransferError, INCOMING,
                                     source_of, TransferError, VersionFetcher)
import pytest

CHUNK = 1 << 20


def child_graph(src, dest, note: str):
    """Write a copy of an ONNX graph with one more metadata entry (a new digest)."""
    import onnx

    model = onnx.load(str(src))
    entry = model.metadata_props.add()
    entry.key, entry.value = 'fleet_test', note
    onnx.save(model, str(dest))
    return dest


@pytest.fixture(scope='module')
def source_root(tmp_path_factory, camvid_root):
    """Return a registry with the base model v0001 (active) and its child v0002 (graph only)."""
    return build_source(tmp_path_factory.mktemp('fetch_source'), camvid_root)


def build_source(work, camvid_root, children: int = 1):
    """
    Make a source registry in ``work``; return its root.

    The base model v0001 (active) and a chain of ``children`` graph-only versions
    (v0002 child of v0001, v0003 of v0002, ...), each a distinct file.
    """
    from test_learning_job import base_registry

    root = base_registry(work / 'registry', camvid_root)
    registry = ModelRegistry(root)
    base = registry.get('v0001')
    graph = registry.artefact_path('v0001', 'onnx')
    for number in range(2, children + 2):
        folder = work / f'v{number}'
        folder.mkdir()
        child = child_graph(graph, folder / 'model.onnx', f'v{number}')
        registry.publish({'onnx': child}, base.classes, parent=f'v{number - 1:04d}',
                         step=number - 1)
    return root


@pytest.fixture
def source(tmp_path, source_root):
    """Return a private copy of the source registry (tests flip bytes in it)."""
    return ModelRegistry(shutil.copytree(source_root, tmp_path / 'source'))


@pytest.fixture
def cache(tmp_path):
    return ModelRegistry(tmp_path / 'cache', create=True)


class CountingReader:
    """Reads through a ChunkServer; counts the artefact bytes; can fail or damage a chunk."""

    def __init__(self, server: ChunkServer, fail_after: int | None = None,
                 corrupt_at: int | None = None) -> None:
        self.server = server
        self.fail_after = fail_after
        self.corrupt_at = corrupt_at
        self.chunks = 0
        self.bytes = 0

    def __call__(self, version_id, sha256, offset, max_length):
        chunk = self.server.read(version_id, sha256, offset, max_length)
        if not sha256:
            return chunk
        if self.fail_after is not None and self.chunks >= self.fail_after:
            raise TransferError('the link dropped')
        self.chunks += 1
        if self.corrupt_at is not None and self.chunks == self.corrupt_at:
            flipped = bytearray(chunk.data)
            flipped[len(flipped) // 2] ^= 0x01
            return replace(chunk, data=bytes(flipped))  # the sha256 is the original's
        self.bytes += len(chunk.data)
        return chunk


def portable(manifest):
    return {k: e.sha256 for k, e in manifest.artefacts.items() if e.device is None}


def test_a_version_arrives_checked_and_is_found_again(source, cache):
    reader = CountingReader(ChunkServer(source))
    fetcher = VersionFetcher(cache, reader, chunk_bytes=CHUNK)
    local = fetcher.fetch_version('v0002')
    wanted = source.get('v0002')
    assert portable(local) == portable(wanted)
    assert source_of(local) == 'v0002' and local.classes == wanted.classes
    assert reader.bytes == sum(e.size for e in wanted.artefacts.values())
    cache.verify(local.id)
    assert not any((cache.root / INCOMING).glob('*')), 'downloads are removed once published'
    # Found again by digests: no artefact byte is read a second time.
    again = CountingReader(ChunkServer(source))
    assert VersionFetcher(cache, again).fetch_version('v0002').id == local.id
    assert again.bytes == 0
    # The parent arrives later and the lineage holds by content.
    parent = VersionFetcher(cache, reader, chunk_bytes=CHUNK).fetch_version('')
    assert source_of(parent) == 'v0001'
    child = VersionFetcher(cache, reader).fetch_version('v0002')
    assert child.id == local.id


def test_the_parent_is_linked_when_it_is_cached_first(source, cache):
    reader = CountingReader(ChunkServer(source))
    first = VersionFetcher(cache, reader, chunk_bytes=CHUNK).fetch_version('v0001')
    child = VersionFetcher(cache, reader, chunk_bytes=CHUNK).fetch_version('v0002')
    assert child.parent == first.id


def test_an_interrupted_transfer_resumes_where_it_stopped(source, cache):
    wanted = source.get('v0001')
    total = sum(e.size for e in wanted.artefacts.values())
    broken = CountingReader(ChunkServer(source), fail_after=5)
    with pytest.raises(TransferError, match='link dropped'):
        VersionFetcher(cache, broken, chunk_bytes=CHUNK).fetch_version('v0001')
    assert cache.list_versions() == []
    parts = list((cache.root / INCOMING).glob('*.part'))
    assert len(parts) == 1 and parts[0].stat().st_size == 5 * CHUNK
    logs = []
    rest = CountingReader(ChunkServer(source))
    fetcher = VersionFetcher(cache, rest, chunk_bytes=CHUNK, log=logs.append)
    local = fetcher.fetch_version('v0001')
    assert rest.bytes == total - 5 * CHUNK, 'the checked bytes are not fetched again'
    assert fetcher.progress.resumed_at == 5 * CHUNK
    assert any(f'at byte {5 * CHUNK}' in line for line in logs), logs
    cache.verify(local.id)


def test_a_corrupted_chunk_is_refused_and_never_written(source, cache):
    bad = CountingReader(ChunkServer(source), corrupt_at=3)
    with pytest.raises(CorruptTransferError, match='does not match its sha256'):
        VersionFetcher(cache, bad, chunk_bytes=CHUNK).fetch_version('v0001')
    part = next((cache.root / INCOMING).glob('*.part'))
    assert part.stat().st_size == 2 * CHUNK, 'only the checked chunks were kept'
    local = VersionFetcher(cache, CountingReader(ChunkServer(source)),
                           chunk_bytes=CHUNK).fetch_version('v0001')
    cache.verify(local.id)


def test_a_damaged_source_file_is_refused_and_nothing_is_published(source, cache):
    graph = source.artefact_path('v0002', 'onnx')
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(CorruptTransferError, match='source file is damaged'):
        VersionFetcher(cache, ChunkServer(source).read, chunk_bytes=CHUNK).fetch_version('v0002')
    assert cache.list_versions() == []
    assert not list((cache.root / INCOMING).glob('*.part')), 'a refused file is not kept'


def test_the_server_serves_only_what_a_manifest_names(source):
    server = ChunkServer(source)
    with pytest.raises(TransferError, match='no version'):
        server.read('', '0' * 64, 0, 10)
    chunk = server.read('', '', 0, 1 << 20)
    assert chunk.version_id == 'v0001' and chunk.total_size == len(chunk.data)
    entry = source.get('v0002').artefacts['onnx']
    tail = server.read('', entry.sha256, entry.size - 5, 100)
    assert len(tail.data) == 5 and tail.total_size == entry.size
    with pytest.raises(TransferError, match='past the end'):
        server.read('', entry.sha256, entry.size + 1, 100)


def test_backoff_doubles_up_to_its_limit():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_a_link_in_a_version_folder_is_not_served(source, tmp_path):
    import os

    secret = tmp_path / 'secret.txt'
    secret.write_text('not a model')
    graph = source.artefact_path('v0002', 'onnx')
    digest = source.get('v0002').artefacts['onnx'].sha256
    graph.unlink()
    os.symlink(secret, graph)
    with pytest.raises(TransferError, match='cannot be read'):
        ChunkServer(source).read('', digest, 0, 100)


def test_a_staging_folder_left_by_a_killed_import_is_removed(cache):
    stale = cache.root / INCOMING / 'stage-0123'
    stale.mkdir(parents=True)
    (stale / 'model.onnx').write_bytes(b'half')
    kept = cache.root / INCOMING / ('0' * 64 + '.part')
    kept.write_bytes(b'checked bytes')
    VersionFetcher(cache, lambda *_args: None)
    assert not stale.exists() and kept.exists()
