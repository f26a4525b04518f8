# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
Concurrent writers of one frame store: labelling threads and a learning-job process.

The learner node adds frames from several executor threads while the learning job (a
child process) adds/marks frames in the same store. Every class must end in the
manifest, every frame must keep its record, and the manifest must stay valid JSON.
"""
import json
from pathlib import Path
import subprocess
import sys
import textwrap
import threading

from ldka_ros.learning.frame_store import FrameStore
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
THREADS, ADDS_PER_THREAD, PROCESS_ADDS = 4, 25, 20

PROCESS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from ldka_ros.learning.frame_store import FrameStore
    store = FrameStore(sys.argv[1])
    print('ready', flush=True)
    sys.stdin.readline()  # the threads are about to start
    rgb = np.full((8, 8, 3), 7, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    for i in range(%d):
        record = store.add(rgb, mask, f'job{i}', 201 + i, source='job')
        print('added', record.frame_id, flush=True)
        seen = [r.frame_id for r in store.frames()]
        store.mark_learned(seen[-3:], 'v0002')
""" % PROCESS_ADDS)


def _frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1 + seed % 4:6] = True
    return rgb, mask


def test_threads_and_a_process_lose_no_class_and_no_frame(tmp_path):
    root = tmp_path / 'store'
    store = FrameStore(root)
    proc = subprocess.Popen([sys.executable, '-c', PROCESS_SCRIPT, str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert proc.stdout.readline().strip() == 'ready', proc.stderr.read()
    added: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def writer(t: int) -> None:
        try:
            barrier.wait()
            for k in range(ADDS_PER_THREAD):
                rgb, mask = _frame(t * 100 + k)
                # Every add brings a new class, so every add rewrites the manifest.
                record = store.add(rgb, mask, f't{t}_{k}', 1 + t * ADDS_PER_THREAD + k)
                added.append(record.frame_id)
        except BaseException as exc:  # noqa: B902 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    proc.stdin.write('go\n')
    proc.stdin.flush()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert not errors, errors
    job_ids = [line.split()[1] for line in out.splitlines() if line.startswith('added ')]
    assert len(added) == THREADS * ADDS_PER_THREAD and len(job_ids) == PROCESS_ADDS

    manifest = json.loads((root / 'manifest.json').read_text())  # valid JSON
    expected = {str(1 + t * ADDS_PER_THREAD + k): f't{t}_{k}'
                for t in range(THREADS) for k in range(ADDS_PER_THREAD)}
    expected.update({str(201 + i): f'job{i}' for i in range(PROCESS_ADDS)})
    missing = sorted(set(expected) - set(manifest['classes']), key=int)
    assert not missing, f'{len(missing)} classes lost from the manifest: {missing[:10]}'
    assert manifest['classes'] == dict(sorted(expected.items(), key=lambda kv: int(kv[0])))
    reopened = FrameStore(root)
    records = {r.frame_id: r for r in reopened.frames()}
    assert set(records) == set(added) | set(job_ids)
    assert all(manifest['classes'][str(r.class_id)] == r.class_name for r in records.values())
    assert any(not r.pending for r in records.values())


def test_concurrent_adds_cannot_give_one_id_two_names(tmp_path):
    """Of threads racing to register one id under different names, exactly one wins."""
    store = FrameStore(tmp_path / 'store')
    names = [f'thing{i}' for i in range(6)]
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(len(names))

    def writer(name: str) -> None:
        rgb, mask = _frame(len(name))
        barrier.wait()
        try:
            store.add(rgb, mask, name, 42)
            outcomes[name] = 'added'
        except ValueError as exc:
            outcomes[name] = str(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [n for n, o in outcomes.items() if o == 'added']
    assert len(outcomes) == len(names) and len(winners) == 1, outcomes
    assert all('contradicts the store' in o for n, o in outcomes.items() if n != winners[0])
    assert {r.class_name for r in store.frames()} == set(winners)
