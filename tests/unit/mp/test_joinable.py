"""JoinableQueue: task_done/join with the unfinished count in shared memory."""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading

import pytest

from shmipc.joinable import JoinableQueue, state_name
from shmipc.region import SHM_DIR

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0


@pytest.fixture
def jq():
    q = JoinableQueue(codec="pickle")
    yield q
    q.close()


def test_counts_puts_and_task_done(jq):
    assert jq.join(0) is True  # nothing put: done
    for i in range(3):
        jq.put(i)
    assert jq.unfinished == 3 and jq.join(0.05) is False
    for _ in range(3):
        jq.get(timeout=5)
        jq.task_done()
    assert jq.unfinished == 0 and jq.join(0) is True
    with pytest.raises(ValueError, match="too many"):
        jq.task_done()
    assert jq.unfinished == 0


def test_every_put_and_get_form_counts(jq):
    jq.put_nowait("a")
    jq.put_bytes(b"b")
    jq.put_many(["c", "d"])
    assert jq.unfinished == 4
    assert jq.get_nowait() == "a"
    assert jq.get_bytes(timeout=5) == b"b"
    assert jq.get_many(10, timeout=5) == ["c", "d"]
    for _ in range(4):
        jq.task_done()
    assert jq.join(0)


def test_a_failed_put_is_not_counted():
    q = JoinableQueue(1, codec="pickle")
    q.put(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.01)
    assert q.unfinished == 1
    packed = JoinableQueue(codec="msgpack")
    with pytest.raises(TypeError):
        packed.put(object())  # refused by the codec: nothing stored, nothing counted
    assert packed.unfinished == 0
    packed.close()
    q.get(timeout=5)
    q.task_done()
    assert q.join(0)
    q.close()


def test_join_wakes_when_the_last_task_is_done(jq):
    for i in range(5):
        jq.put(i)
    joined = threading.Event()

    def joiner():
        jq.join()
        joined.set()

    t = threading.Thread(target=joiner)
    t.start()
    for _ in range(4):
        jq.get(timeout=5)
        jq.task_done()
    assert not joined.wait(0.05)
    jq.get(timeout=5)
    jq.task_done()
    assert joined.wait(20)
    t.join(10)


def test_workers_in_other_processes(jq, procs):
    def worker():
        for item in iter(lambda: jq.get(timeout=20), None):
            assert item >= 0
            jq.task_done()
        jq.task_done()

    pids = [procs.fork(worker) for _ in range(3)]
    for i in range(60):
        jq.put(i)
    assert jq.join(30)
    for _ in pids:
        jq.put(None)
    assert jq.join(30)
    assert [procs.join(p) for p in pids] == [0, 0, 0]
    assert jq.unfinished == 0 and jq.abandoned() == 0


def test_a_consumer_killed_before_task_done_is_counted(jq, procs):
    jq.put("task")
    jq.put("other")

    def die_holding():
        jq.get(timeout=20)
        os.kill(os.getpid(), signal.SIGKILL)

    pid = procs.fork(die_holding)
    assert procs.join(pid) == -signal.SIGKILL
    assert jq.unfinished == 2 and jq.abandoned() == 1
    jq.get(timeout=5)
    jq.task_done()
    assert jq.join(0.05) is False  # the dead consumer's task is still unfinished
    jq.task_done()  # the program writes it off
    assert jq.join(0)


def test_pickles_by_name_with_its_state(jq):
    other = pickle.loads(pickle.dumps(jq))
    assert type(other) is JoinableQueue and other.name == jq.name
    jq.put("x")
    assert other.unfinished == 1
    assert other.get(timeout=5) == "x"
    other.task_done()
    assert jq.join(0)
    attached = JoinableQueue.attach(jq.name, codec="pickle")
    assert attached.unfinished == 0
    attached.close()
    other.close()


def test_close_removes_both_segments():
    q = JoinableQueue()
    names = [q.name, state_name(q.name)]
    assert all(os.path.exists(os.path.join(SHM_DIR, n)) for n in names)
    q.close()
    assert not any(os.path.exists(os.path.join(SHM_DIR, n)) for n in names)
    assert "closed" in repr(q)
