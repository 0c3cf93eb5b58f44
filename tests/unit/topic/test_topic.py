"""Topic basics (issue 8): the API of the contract, policies, lag, slots, eviction, errors,
statistics and inspect_segment. Crash-prone and multi-process cases fork children."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time

import pytest
from _procs import Child, fork_call, read_exact_or_fail, wait_stopped

import shmipc
from shmipc import (
    Closed,
    CorruptedError,
    Evicted,
    Lagged,
    LayoutMismatch,
    MessageTooLarge,
    Publisher,
    ShmipcError,
    Subscriber,
    Topic,
    TopicStatistics,
)
from shmipc._native import lib
from shmipc.topic import CONTROL, HEADER_SIZE, SLOT, SLOT_SIZE, inspect_segment

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def topic():
    t = Topic.create(capacity=4096)
    yield t
    t.close()


def test_exported_from_shmipc():
    for name in ("Topic", "Publisher", "Subscriber", "TopicStatistics", "Evicted"):
        assert getattr(shmipc, name) is not None and name in shmipc.__all__


def test_layout_keeps_written_words_on_their_own_lines():
    # the published line, the lock line, the sleepers and each cursor: no line shared
    lines = {f: CONTROL[f] // 64 for f in ("lock", "tail", "data_waiters", "space_waiters")}
    assert len(set(lines.values())) == 4, lines
    assert CONTROL["oldest"] // 64 == CONTROL["tail"] // 64  # read together by readers
    assert SLOT["cursor"] // 64 != SLOT["word"] // 64 and SLOT_SIZE % 64 == 0
    assert HEADER_SIZE == lib.SHMIPC_TOPIC_HEADER_SIZE


def test_publish_and_receive_objects_and_bytes(topic):
    pub = topic.publisher()
    a, b = topic.subscribe(), topic.subscribe()
    items = [{"i": 1}, [1, 2], "s", b"raw", 3.5, None]
    for x in items:
        pub.publish(x)
    pub.publish_bytes(bytearray(b"ba"))
    pub.publish_many([7, b"eight"])
    want = [*items, b"ba", 7, b"eight"]
    assert [a.receive() for _ in want] == want
    assert b.receive_many(100) == want
    with pytest.raises(queue.Empty):
        a.receive(timeout=0)
    assert a.lag == 0
    pub.publish(1)
    assert a.lag == 1 and a.receive_bytes() == topic.codec.encode(1)


def test_subscriber_sees_exactly_what_is_published_after_subscribe(topic):
    pub = topic.publisher()
    pub.publish("before")
    sub = topic.subscribe()
    pub.publish("after")
    assert sub.receive(timeout=1) == "after"
    with pytest.raises(queue.Empty):
        sub.receive(timeout=0)


def test_iteration_yields_messages_in_order(topic):
    pub, sub = topic.publisher(), topic.subscribe()
    pub.publish_many(range(5))
    it = iter(sub)
    assert [next(it) for _ in range(5)] == list(range(5))


def test_receive_timeout_waits_then_empty(topic):
    sub = topic.subscribe()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        sub.receive(timeout=0.2)
    assert 0.19 <= time.monotonic() - t0 < 5


def test_receive_wakes_when_a_message_comes(topic):
    sub, pub = topic.subscribe(), topic.publisher()
    threading.Timer(0.05, pub.publish, ("late",)).start()
    assert sub.receive(timeout=10) == "late"


def test_block_policy_fills_then_full_with_timeout(topic):
    pub = topic.publisher()
    sub = topic.subscribe()
    n = 0
    with pytest.raises(queue.Full):
        while True:
            pub.publish_bytes(b"x" * 100, timeout=0)
            n += 1
    assert 0 < n <= 4096 // 112
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        pub.publish_bytes(b"x" * 100, timeout=0.2)
    assert 0.19 <= time.monotonic() - t0 < 5
    assert sub.receive_bytes() == b"x" * 100  # room for one more now
    pub.publish_bytes(b"y" * 100, timeout=0)
    assert topic.statistics().publisher_waits >= 1


def test_blocked_publisher_resumes_when_the_subscriber_reads(topic):
    pub, sub = topic.publisher(), topic.subscribe()
    total = 500  # ~14 rings' worth
    got = []
    reader = threading.Thread(
        target=lambda: got.extend(sub.receive(timeout=10) for _ in range(total))
    )
    reader.start()
    for i in range(total):
        pub.publish(i, timeout=10)
    reader.join(20)
    assert got == list(range(total))


def test_no_subscriber_never_blocks(topic):
    pub = topic.publisher()
    for i in range(1000):
        pub.publish(i, timeout=0)
    assert topic.statistics().published == 1000


def test_too_large_message():
    with Topic.create(capacity=1024) as t:
        pub = t.publisher()
        assert t.max_message == 512 - 16
        pub.publish_bytes(b"x" * t.max_message)
        with pytest.raises(MessageTooLarge, match="half its capacity"):
            pub.publish_bytes(b"x" * (t.max_message + 1))


def test_overwrite_lagged_reports_the_exact_count_then_resumes_at_the_oldest():
    with Topic.create(capacity=1024, policy="overwrite") as t:
        pub, sub = t.publisher(), t.subscribe()
        for i in range(200):
            pub.publish(i, timeout=0)  # never waits
        with pytest.raises(Lagged) as info:
            sub.receive()
        missed = info.value.missed
        assert 0 < missed < 200
        rest = sub.receive_many(1000)
        # exactly the messages from `missed` on: nothing skipped beyond the count, no repeat
        assert rest == list(range(missed, 200))
        st = t.statistics()
        assert st.laps == 1 and st.missed == missed
        pub.publish("live")
        assert sub.receive() == "live"


def test_receive_many_keeps_lagged_for_the_next_call():
    with Topic.create(capacity=1024, policy="overwrite") as t:
        pub, sub = t.publisher(), t.subscribe()
        pub.publish(0)
        assert sub.receive_many(1) == [0]
        pub.publish(1)
        # sub reads one, then is lapped before the rest of its batch
        first = sub.receive(timeout=0)
        assert first == 1
        for i in range(2, 300):
            pub.publish(i)
        with pytest.raises(Lagged):
            sub.receive_many(10)
        pub2 = [sub.receive() for _ in range(3)]
        assert pub2 == sorted(pub2)


def test_full_table_names_max_subscribers_and_close_frees_a_slot():
    with Topic.create(capacity=1024, max_subscribers=2) as t:
        a, b = t.subscribe(), t.subscribe()
        with pytest.raises(ShmipcError, match="max_subscribers=2"):
            t.subscribe()
        a.close()
        c = t.subscribe()
        assert c.slot == a.slot
        b.close()
        c.close()


def test_a_dead_subscribers_slot_is_reused():
    with Topic.create(capacity=1024, max_subscribers=1) as t:
        code, _ = fork_call(lambda fd: (t.subscribe(), os._exit(0)))
        assert code == 0
        assert t.statistics().subscribers[0].state == "active"
        sub = t.subscribe()  # reclaims the dead one's slot
        assert sub.slot == 0


def test_a_dead_subscriber_does_not_block_a_publisher():
    with Topic.create(capacity=1024) as t:
        code, _ = fork_call(lambda fd: (t.subscribe(), os._exit(0)))
        assert code == 0
        pub = t.publisher()
        t0 = time.monotonic()
        for _i in range(100):
            pub.publish_bytes(b"x" * 64, timeout=10)
        assert time.monotonic() - t0 < 5
        assert t.statistics().evictions == 1 and t.statistics().subscribers == []


@pytest.mark.timeout(60)
def test_a_stopped_subscriber_is_evicted_and_learns_it():
    t = Topic.create(capacity=1024, liveness_interval=0.3)
    try:

        def body(fd: int) -> None:
            sub = t.subscribe()
            os.write(fd, b"S")
            os.kill(os.getpid(), signal.SIGSTOP)  # stopped without closing
            try:
                sub.receive(timeout=5)
            except Evicted:
                os.write(fd, b"E")
            except BaseException as exc:
                os.write(fd, repr(exc).encode())

        child = Child(body)
        assert read_exact_or_fail(child.fd, 1) == b"S"
        wait_stopped(child.pid)
        pub = t.publisher()
        t0 = time.monotonic()
        for _i in range(100):  # ~6 rings: blocks on the stopped child until it is evicted
            pub.publish_bytes(b"x" * 100, timeout=10)
        blocked = time.monotonic() - t0
        assert 0.25 <= blocked < 0.3 + 3.0
        assert t.statistics().evictions == 1
        assert t.statistics().subscribers[0].state == "evicted"
        os.kill(child.pid, signal.SIGCONT)
        code, report = child.finish()
        assert (code, report) == (0, b"E")
        assert t.statistics().subscribers == []  # its close gave the slot back
    finally:
        t.close()


def test_a_slow_running_subscriber_is_never_evicted():
    with Topic.create(capacity=1024, liveness_interval=0.1) as t:
        pub, sub = t.publisher(), t.subscribe()
        for _ in range(8):
            pub.publish_bytes(b"x" * 100)
        with pytest.raises(queue.Full):
            pub.publish_bytes(b"x" * 100, timeout=0.5)  # 5 liveness intervals
        assert t.statistics().evictions == 0
        assert sub.receive_bytes() == b"x" * 100


def test_closed_handles_raise_closed(topic):
    pub, sub = topic.publisher(), topic.subscribe()
    pub.close()
    sub.close()
    with pytest.raises(Closed):
        pub.publish(1)
    with pytest.raises(Closed):
        sub.receive(timeout=0)
    pub2, sub2 = topic.publisher(), topic.subscribe()
    topic.close()
    with pytest.raises(Closed):
        pub2.publish_bytes(b"x")
    with pytest.raises(Closed):
        sub2.receive()
    with pytest.raises(Closed):
        topic.statistics()


def test_close_racing_a_blocked_receive_gives_closed_not_a_crash():
    def body(fd: int) -> None:
        t = Topic.create(capacity=1024)
        sub = t.subscribe()
        receive = sub.receive  # bound native method: outlives the handle's close
        errors = []

        def wait() -> None:
            try:
                receive(timeout=10)
            except Closed:
                errors.append("closed")

        th = threading.Thread(target=wait)
        th.start()
        time.sleep(0.05)
        t.close()
        th.join(10)
        del sub, t
        with pytest.raises(Closed):
            receive(timeout=0)
        os.write(fd, repr(errors).encode())

    code, report = fork_call(body)
    assert code == 0, f"child ended with {code}"
    assert report == b"['closed']"


def test_handles_do_not_pickle(topic):
    with pytest.raises(TypeError):
        pickle.dumps(topic.publisher())
    with pytest.raises(TypeError):
        pickle.dumps(topic.subscribe())


def test_attach_checks_kind_and_codec(shm_name):
    with Topic.create(shm_name, capacity=1024, codec="pickle") as t:
        with pytest.raises(ValueError, match="unpickling runs code"):
            Topic.attach(shm_name)
        with pytest.raises(ValueError, match="made with codec 'pickle'"):
            Topic.attach(shm_name, codec="msgpack")
        other = Topic.attach(shm_name, codec="pickle")
        assert other.policy == "block" and other.capacity == 1024
        other.close()
        assert t.name == shm_name
    q = shmipc.Queue(name=shm_name + "q")
    try:
        with pytest.raises(LayoutMismatch):
            Topic.attach(shm_name + "q")
    finally:
        q.close()


def test_attach_refuses_a_corrupt_control_block(shm_name):
    with Topic.create(shm_name, capacity=1024) as t:
        lib.shmipc_store64_relaxed(t._ptr, CONTROL["capacity"], 1000)
        with pytest.raises(CorruptedError):
            Topic.attach(shm_name)


def test_pickles_by_name_into_a_spawned_child_with_its_codec():
    from _topic_helpers import spawned_receiver

    ctx = multiprocessing.get_context("spawn")
    with Topic.create(capacity=4096, codec="pickle") as t:
        ready, out = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=spawned_receiver, args=(t, ready, 3, out))
        child.start()
        try:
            assert ready.wait(60)
            pub = t.publisher()
            for x in ({1, 2}, (3,), "x"):
                pub.publish(x)  # a set only pickle carries
            codec, got = out.get(timeout=60)
            assert codec == "pickle" and got == [{1, 2}, (3,), "x"]
        finally:
            child.join(30)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0


def test_several_publisher_threads_each_keep_their_order(topic):
    sub = topic.subscribe()
    got: list = []
    reader = threading.Thread(
        target=lambda: got.extend(sub.receive(timeout=10) for _ in range(3000))
    )
    reader.start()

    def publish(k: int) -> None:
        pub = topic.publisher()
        for i in range(1000):
            pub.publish([k, i], timeout=10)

    threads = [threading.Thread(target=publish, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    reader.join(30)
    for k in range(3):
        assert [i for kk, i in got if kk == k] == list(range(1000))


def test_statistics_and_inspect_segment(topic):
    pub, sub = topic.publisher(), topic.subscribe()
    pub.publish_many(range(10))
    sub.receive_many(4)
    st = topic.statistics()
    assert isinstance(st, TopicStatistics)
    assert st.published == 10 and st.policy == "block" and st.capacity == 4096
    assert [(s.slot, s.pid, s.state, s.lag) for s in st.subscribers] == [
        (sub.slot, os.getpid(), "active", 6)
    ]
    info = inspect_segment(memoryview(topic._mapping))
    json.dumps(info)
    assert info["published"] == 10 and info["subscribers"][0]["lag"] == 6
    assert info["codec"] == "msgpack" and info["policy"] == "block"
    assert isinstance(pub, Publisher) and isinstance(sub, Subscriber)


def test_inspect_segment_raises_corrupted_on_nonsense(topic):
    raw = bytearray(topic._mapping)
    inspect_segment(memoryview(raw))
    for off, value in (
        (CONTROL["capacity"], (1000).to_bytes(8, "little")),
        (CONTROL["oldest"], (1 << 40).to_bytes(8, "little")),
        (HEADER_SIZE + SLOT["word"], (77).to_bytes(8, "little")),
        (CONTROL["magic"], b"\0\0\0\0"),
    ):
        bad = bytearray(raw)
        bad[128 + off : 128 + off + len(value)] = value
        with pytest.raises((CorruptedError, LayoutMismatch)):
            inspect_segment(memoryview(bad))
    with pytest.raises(CorruptedError):
        inspect_segment(memoryview(raw[:100]))
    before = bytes(topic._mapping)
    inspect_segment(memoryview(topic._mapping))
    assert bytes(topic._mapping) == before  # read-only


def test_a_forked_child_cannot_use_or_free_its_parents_subscriber(topic):
    sub, pub = topic.subscribe(), topic.publisher()

    def body(fd: int) -> None:
        try:
            sub.receive(timeout=0)
        except RuntimeError as exc:
            os.write(fd, b"refused " if "belongs to the process" in str(exc) else b"other ")
        sub.close()  # must not give the parent's slot back

    code, report = fork_call(body)
    assert (code, report) == (0, b"refused ")
    pub.publish("still mine")
    assert sub.receive(timeout=1) == "still mine"
    assert topic.statistics().subscribers[0].state == "active"


def test_attach_refuses_another_users_topic_unless_trusted(shm_name):
    nobody = 65534
    with Topic.create(shm_name, capacity=1024) as t:
        os.chown(os.path.join("/dev/shm", shm_name), nobody, nobody)  # now nobody's topic
        with pytest.raises(PermissionError, match=rf"trusted_uids=\({nobody},\)"):
            Topic.attach(shm_name)
        other = Topic.attach(shm_name, trusted_uids=(nobody,))
        assert pickle.loads(pickle.dumps(other)).name == t.name  # the trust travels
        other.close()


def test_a_header_naming_pickle_never_makes_attach_unpickle(shm_name, tmp_path):
    with Topic.create(shm_name, capacity=1024) as t:
        flags = shmipc.layout.SEGMENT_LAYOUT.fields["flags"]
        fd = os.open(os.path.join("/dev/shm", shm_name), os.O_RDWR)
        try:
            os.pwrite(fd, (2).to_bytes(4, "little"), flags.offset)  # "made with pickle"
        finally:
            os.close(fd)
        with pytest.raises(ValueError, match="codec='pickle'"):
            Topic.attach(shm_name)
        assert t.codec.name == "msgpack"


def test_receive_many_keeps_a_bad_frame_for_the_next_call_and_loses_nothing(topic):
    from shmipc.topic import K_OBJ

    pub, sub = topic.publisher(), topic.subscribe()
    pub.publish(1)
    assert pub._put(b"\xc1", K_OBJ, 0) == lib.SHMIPC_OK  # 0xc1: never valid msgpack
    pub.publish(2)
    assert sub.receive_many(10) == [1]
    with pytest.raises(CorruptedError):  # the codec's error for a bad frame
        sub.receive(timeout=0)
    assert sub.receive_many(10, timeout=0) == [2]
