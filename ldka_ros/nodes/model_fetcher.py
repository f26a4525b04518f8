# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Model versions over ROS: the learner serves chunks, a robot follows the fleet's version.

Why here and thin: the transfer rules (chunk checks, resume, the checked publish into
the robot's cache) live in :mod:`ldka_ros.registry.fetch` and are tested without ROS.
This module only

* answers ``~/fetch_artefact`` (``FetchArtefact``) from a registry (:class:`ArtefactService`,
  on the learner);
* turns that service into the fetcher's ``read`` callable (:class:`RosChunkReader`);
* runs one worker thread on the robot (:class:`ModelFollower`) that resolves the wanted
  version (the fleet's announced one, or ``pin_version``), fetches it into the local
  registry when it is not there, retries with back-off after a failure, and only then
  asks the node to hot-swap. The camera path never waits for any of it.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
import threading
import time
from typing import Any, Callable

from ldka_ros.registry import ModelRegistry, RegistryError
from ldka_ros.registry.fetch import (Backoff, Chunk, ChunkServer, CorruptTransferError,
                                     FetchProgress, source_of, TransferError,
                                     VersionFetcher)
from ldka_ros_interfaces.srv import FetchArtefact

#: How long one chunk request may take before the link counts as down.
CHUNK_TIMEOUT_S = 30.0


class ArtefactService:
    """``~/fetch_artefact`` of a registry's owner: chunks of files its manifests name."""

    def __init__(self, node: Any, registry: ModelRegistry, name: str = '~/fetch_artefact',
                 callback_group: Any = None) -> None:
        from ldka_ros.nodes.service_guard import guard_service

        self.node = node
        self.server = ChunkServer(registry)
        self.service = node.create_service(
            FetchArtefact, name, guard_service(node, 'fetch_artefact', self._on_fetch),
            callback_group=callback_group)

    def _on_fetch(self, request, response):
        """Fill one chunk; a request it cannot serve is refused with the reason."""
        try:
            chunk = self.server.read(request.version_id, request.sha256, int(request.offset),
                                     int(request.max_length))
        except (RegistryError, OSError) as exc:
            response.success = False
            response.message = str(exc)
            return response
        response.success = True
        response.version_id = chunk.version_id
        response.total_size = chunk.total_size
        response.offset = chunk.offset
        response.data = array.array('B', chunk.data)
        response.chunk_sha256 = chunk.chunk_sha256
        response.file_sha256 = chunk.file_sha256
        return response


class RosChunkReader:
    """Call a ``FetchArtefact`` service from a worker thread; failures are TransferErrors."""

    def __init__(self, node: Any, service: str, callback_group: Any = None,
                 timeout_s: float = CHUNK_TIMEOUT_S) -> None:
        self.client = node.create_client(FetchArtefact, service, callback_group=callback_group)
        self.timeout_s = timeout_s

    def __call__(self, version_id: str, sha256: str, offset: int, max_length: int) -> Chunk:
        client = self.client
        if not client.service_is_ready() and not client.wait_for_service(timeout_sec=2.0):
            raise TransferError(f'{client.srv_name} is not reachable')
        request = FetchArtefact.Request(version_id=version_id, sha256=sha256,
                                        offset=int(offset), max_length=int(max_length))
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(self.timeout_s):
            client.remove_pending_request(future)
            raise TransferError(f'no answer from {client.srv_name} within '
                                f'{self.timeout_s:.0f} s')
        reply = future.result()
        if not reply.success:
            raise TransferError(f'{client.srv_name} refused: {reply.message}')
        return Chunk(bytes(reply.data), int(reply.offset), int(reply.total_size),
                     reply.chunk_sha256, reply.file_sha256, reply.version_id)


@dataclass
class FollowState:
    """What the follower knows, for /diagnostics (read under the follower's lock)."""

    fleet_version: str = ''    # newest announced by the learner
    target: str = ''           # what this robot wants to serve (pin or fleet)
    stage: str = 'waiting'     # waiting / fetching / loading / refused / unreachable / done
    detail: str = ''
    fetch_done: int = 0
    fetch_total: int = 0
    fetch_seconds: float = 0.0
    fetched_version: str = ''


class ModelFollower:
    """
    Keep a robot's local registry and model in step with the fleet (or with a pin).

    ``swap(local_id)`` asks the node to hot-swap (it returns at once); ``serving()``
    returns the local id now served. One worker thread does all waiting and transfer.
    """

    def __init__(self, registry: ModelRegistry, read, swap: Callable[[str], Any],
                 serving: Callable[[], str], pin: str = '', chunk_bytes: int = 1 << 20,
                 max_rate_bps: float = 0.0, retry_s: float = 2.0, retry_max_s: float = 60.0,
                 log: Callable[[str], None] = print,
                 warn: Callable[[str], None] | None = None) -> None:
        self.registry = registry
        self.swap = swap
        self.serving = serving
        self.pin = pin
        self.log = log
        self.warn = warn or log
        self.fetcher = VersionFetcher(registry, read, chunk_bytes=chunk_bytes,
                                      max_rate_bps=max_rate_bps, on_progress=self._progress,
                                      log=log)
        self.backoff = Backoff(retry_s, retry_max_s)
        self.state = FollowState(target=pin)
        self._digests: dict[str, str] | None = None
        self._cond = threading.Condition()
        self._wanted = pin  # '' = the source's active version (asked once at start)
        self._generation = 1
        self._done_generation = 0
        self._running = True
        self._thread = threading.Thread(target=self._work, name='model-follower', daemon=True)
        self._thread.start()

    # -- inputs ----------------------------------------------------------------------
    def announce(self, version_id: str, digests: dict[str, str]) -> None:
        """Follow ``version_id``, which the learner announced (latched), unless pinned."""
        with self._cond:
            self.state.fleet_version = version_id
            if self.pin:
                return
            if version_id == self._wanted and self._done_generation == self._generation:
                return
            self._wanted, self._digests = version_id, dict(digests)
            self.state.target = version_id
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    # -- worker ----------------------------------------------------------------------
    def _progress(self, progress: FetchProgress) -> None:
        with self._cond:
            self.state.fetch_done, self.state.fetch_total = progress.done, progress.total

    def _set(self, stage: str, detail: str = '') -> None:
        with self._cond:
            self.state.stage, self.state.detail = stage, detail

    def _next_job(self) -> tuple[int, str, dict | None] | None:
        with self._cond:
            while self._running and self._done_generation == self._generation:
                self._cond.wait(1.0)
            if not self._running:
                return None
            return self._generation, self._wanted, self._digests

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            generation, wanted, digests = job
            try:
                self._follow(wanted, digests)
            except Exception as exc:  # noqa: BLE001 - retried; the old model keeps serving
                self._failed(generation, wanted, exc)
                continue
            self.backoff.reset()
            with self._cond:
                if self._generation == generation:
                    self._done_generation = generation

    def _follow(self, wanted: str, digests: dict | None) -> None:
        """Find or fetch ``wanted`` (a source id, '' = its active one) and swap to it."""
        local = self.fetcher.find_local(wanted, digests) if wanted else None
        if local is None:
            self._set('fetching', f'asking for {wanted or "the active version"}')
            started = time.monotonic()
            manifest = self.fetcher.fetch_version(wanted)
            local = manifest.id
            with self._cond:
                self.state.fetch_seconds = time.monotonic() - started
                self.state.fetched_version = source_of(manifest)
                if not wanted:
                    self.state.target = source_of(manifest)
            self.log(f'model version {source_of(manifest)} is in the local registry as '
                     f'{local} ({self.state.fetch_total} bytes fetched in '
                     f'{self.state.fetch_seconds:.2f} s)')
        if local != self.serving():
            self._set('loading', f'swapping to {local}')
            self.swap(local)
        self._set('done')

    def _failed(self, generation: int, wanted: str, exc: Exception) -> None:
        """Report a failed try and wait (interruptibly) before the next one."""
        stage = ('refused' if isinstance(exc, CorruptTransferError) else
                 'unreachable' if isinstance(exc, TransferError) else 'failed')
        delay = self.backoff.next_delay()
        text = f'{wanted or "the active version"}: {exc}'
        self._set(stage, f'{text} (retry in {delay:.0f} s)')
        self.warn(f'model version not taken ({stage}): {text}; the served model stays; '
                  f'retrying in {delay:.1f} s')
        deadline = time.monotonic() + delay
        with self._cond:
            while (self._running and self._generation == generation
                   and time.monotonic() < deadline):
                self._cond.wait(max(0.05, deadline - time.monotonic()))

    # -- diagnostics -----------------------------------------------------------------
    def values(self, serving_source: str) -> dict:
        """Return the /diagnostics values: fleet version, what is served, lag and why."""
        with self._cond:
            state = FollowState(**self.state.__dict__)
        target = self.pin or state.target or state.fleet_version
        lagging = bool(state.fleet_version) and serving_source != state.fleet_version
        if not lagging:
            reason = ''
        elif self.pin:
            reason = f'pinned to {self.pin}'
        elif state.stage in ('refused', 'unreachable', 'failed', 'fetching'):
            reason = f'{state.stage}: {state.detail}'
        else:
            reason = f'loading {target}'
        return {'fleet_version': state.fleet_version, 'serving_fleet_version': serving_source,
                'pin_version': self.pin, 'lagging': lagging, 'lag_reason': reason,
                'fetch_stage': state.stage, 'fetch_bytes': state.fetch_done,
                'fetch_total_bytes': state.fetch_total,
                'last_fetch_s': round(state.fetch_seconds, 3),
                'last_fetched_version': state.fetched_version}
