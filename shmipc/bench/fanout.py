"""Fan-out: one publisher, every subscriber (each its own process) receives every message.

The rows reuse the stream loops of workloads.py (a :class:`~.transports.Sender` for the
publisher, a :class:`~.transports.Receiver` per subscriber) over three broadcast transports:
shmipc's Topic (``policy="block"``), pyzmq XPUB/SUB over ipc:// with ``XPUB_NODROP`` and a
high-water mark (the publisher blocks rather than drops), and iceoryx2 publish-subscribe with
``RetryUntilDelivered`` back-pressure and no safe overflow (the publisher retries rather than
overwrites). Every subscriber is subscribed before the start barrier: each adapter's publisher
end waits for as many subscriptions as there are subscribers (pyzmq: one subscription message
per subscriber through ``XPUB_VERBOSE``; iceoryx2: the service's subscriber count, then a
hello sample every subscriber takes), so no transport can lose the first messages to a late
join. The publisher ends every subscriber's
stream in-band with one end mark, after its last message.

:func:`judge` checks each subscriber on its own: every message exactly once and in the order
published (:func:`~.verify.check_ordered`). The figure is per subscriber: messages over the
span from the start barrier to the slowest subscriber's end mark; the aggregate is that times
the subscribers.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import pickle
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from .transports import (
    CONNECT_TIMEOUT_MS,
    Channel,
    ChannelSpec,
    Receiver,
    Sender,
    Transport,
    end_mark,
)
from .verify import Verdict, check_ordered, combine

__all__ = ["TRANSPORTS", "judge", "load_topic"]

#: Messages a subscriber may have waiting (pyzmq: high-water mark of each side; iceoryx2: the
#: subscriber's buffer). 1000 is pyzmq's default high-water mark.
BACKLOG = 1000
#: How long a waiting iceoryx2 subscriber sleeps before looking again without a notification.
_IOX_WAIT_MS = 100
#: The first sample of an iceoryx2 fan-out, which every subscriber takes before the start
#: barrier. Without it, iceoryx2 0.10 lost samples here about one run in ten: the ones sent
#: once a subscriber's buffer first filled, before that subscriber had taken its first
#: sample (despite RetryUntilDelivered and no safe overflow). With it: none in our runs.
_IOX_HELLO = b"hello"


def load_topic() -> Any:
    """shmipc's Topic class (``shmipc.topic.Topic``; ImportError until it exists)."""
    return importlib.import_module("shmipc.topic").Topic


def _topic_unavailable() -> str | None:
    try:
        cls = load_topic()
    except Exception as exc:
        return f"cannot import shmipc.topic.Topic: {type(exc).__name__}: {exc}"
    missing = [m for m in ("create", "attach", "publisher", "subscribe") if not hasattr(cls, m)]
    return f"shmipc.topic.Topic has no {'/'.join(missing)}" if missing else None


def _close_all(*closers: Callable[[], object]) -> None:
    """Call every closer, even when one fails; then raise the first failure."""
    first: BaseException | None = None
    for close in closers:
        try:
            close()
        except Exception as exc:  # keep closing the others
            first = first or exc
    if first is not None:
        raise first


# --- shmipc Topic ----------------------------------------------------------------------------


class _TopicChannel(Channel):
    """shmipc.Topic, ``policy="block"``: publish_bytes/receive_bytes for bytes, publish/receive
    (msgpack codec) for dicts. Made in the parent; each child attaches by name."""

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._topic = load_topic().create(
            capacity=spec.capacity, policy="block", max_subscribers=max(spec.consumers, 4)
        )

    def _attach(self) -> Any:
        return load_topic().attach(self._topic.name)

    def sender(self, producer: int) -> Sender:
        topic = self._attach()
        publisher = topic.publisher()
        send = publisher.publish if self.spec.objects else publisher.publish_bytes
        end = end_mark(self.spec)

        def finish() -> None:
            send(end)

        return Sender(
            send=send, finish=finish, close=lambda: _close_all(publisher.close, topic.close)
        )

    def receiver(self, consumer: int) -> Receiver:
        topic = self._attach()
        subscriber = topic.subscribe()
        recv = subscriber.receive if self.spec.objects else subscriber.receive_bytes
        return Receiver(recv=recv, ends=1, close=lambda: _close_all(subscriber.close, topic.close))

    def close(self, broken: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):  # the name, then the handle
            self._topic.unlink()
        self._topic.close()


# --- pyzmq XPUB/SUB --------------------------------------------------------------------------


class _ZmqPubSubChannel(Channel):
    """pyzmq: the publisher binds an XPUB socket (XPUB_NODROP: a full subscriber blocks the
    send instead of losing the message; XPUB_VERBOSE: every subscription reaches it, which is
    the handshake), each subscriber connects a SUB socket subscribed to everything."""

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._dir = tempfile.mkdtemp(prefix="shmipc-bench-zmq-")
        self._address = f"ipc://{self._dir}/pub"

    def sender(self, producer: int) -> Sender:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.sndhwm = BACKLOG
        sock.bind(self._address)
        for _ in range(self.spec.consumers):  # one b"\x01" subscription per subscriber
            if not sock.poll(CONNECT_TIMEOUT_MS, zmq.POLLIN):
                raise TimeoutError(f"not every subscriber subscribed in {CONNECT_TIMEOUT_MS} ms")
            if sock.recv()[:1] != b"\x01":
                raise RuntimeError("unexpected message on the XPUB socket")
        send = sock.send_pyobj if self.spec.objects else sock.send
        end = end_mark(self.spec)

        def finish() -> None:
            send(end)

        def close() -> None:  # only once every subscriber has everything: see harness
            sock.close(linger=0)
            ctx.term()

        return Sender(send=send, finish=finish, close=close)

    def receiver(self, consumer: int) -> Receiver:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.rcvhwm = BACKLOG
        sock.reconnect_ivl = 5  # ms: retry quickly while the publisher is still binding
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self._address)

        def close() -> None:
            sock.close(linger=0)
            ctx.term()

        recv = sock.recv_pyobj if self.spec.objects else sock.recv
        return Receiver(recv=recv, ends=1, close=close)

    def close(self, broken: bool = False) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


# --- iceoryx2 --------------------------------------------------------------------------------


def _racing(open_or_create: Callable[[], Any], error: type[BaseException]) -> Any:
    """``open_or_create()``, retried while another process is half-way through creating the
    same service (both sides of a row open it at once)."""
    for _ in range(49):
        try:
            return open_or_create()
        except error:
            time.sleep(0.01)
    return open_or_create()


def iceoryx2_service(node: Any, name: str, payload: Any, *, subscribers: int, backlog: int) -> Any:
    """Open (or create) a publish-subscribe service that never loses a sample: no safe
    overflow (a full subscriber buffer holds the publisher back), no history."""
    import iceoryx2 as iox2  # type: ignore[import-untyped]

    builder = (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(payload)
        .max_publishers(1)
        .max_subscribers(subscribers)
        .subscriber_max_buffer_size(backlog)
        .subscriber_max_borrowed_samples(2)
        .history_size(0)
        .enable_safe_overflow(False)
    )
    return _racing(builder.open_or_create, iox2.PublishSubscribeOpenOrCreateError)


class Iceoryx2Ports:
    """One process's iceoryx2 node and ports. The objects are dropped explicitly by
    :meth:`close` (a forked child ends with ``os._exit``, which would leave the node's files
    behind)."""

    def __init__(self) -> None:
        import iceoryx2 as iox2  # type: ignore[import-untyped]

        iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
        self.iox2 = iox2
        self.node: Any = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.ports: list[Any] = []
        self.factories: list[Any] = []

    def service(self, name: str, payload: Any, *, subscribers: int, backlog: int) -> Any:
        """A publish-subscribe service (see :func:`iceoryx2_service`)."""
        factory = iceoryx2_service(
            self.node, name, payload, subscribers=subscribers, backlog=backlog
        )
        self.factories.append(factory)
        return factory

    def event(self, name: str) -> Any:
        """An event service: how a waiting iceoryx2 subscriber learns of new samples."""
        builder = self.node.service_builder(self.iox2.ServiceName.new(name)).event()
        factory = _racing(builder.open_or_create, self.iox2.EventOpenOrCreateError)
        self.factories.append(factory)
        return factory

    def port(self, port: Any) -> Any:
        """Keep ``port`` for :meth:`close`."""
        self.ports.append(port)
        return port

    def publisher(self, service: Any, max_slice_len: int) -> Any:
        """A publisher that retries until every subscriber has room (it never drops)."""
        builder = service.publisher_builder().initial_max_slice_len(max_slice_len)
        strategy = self.iox2.BackpressureStrategy.RetryUntilDelivered
        return self.port(builder.backpressure_strategy(strategy).create())

    def waiter(self, listener: Any) -> Callable[[], object]:
        """Sleep until a notification arrives (or a short timeout passes)."""
        timeout = self.iox2.Duration.from_millis(_IOX_WAIT_MS)
        timed_wait = listener.timed_wait
        return lambda: timed_wait(timeout)

    def wait_for_subscribers(self, service: Any, publisher: Any, count: int) -> None:
        """Return once ``count`` subscribers are connected to ``service`` (the handshake)."""
        deadline = time.monotonic() + CONNECT_TIMEOUT_MS / 1000
        while service.dynamic_config.number_of_subscribers < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every subscriber subscribed in {CONNECT_TIMEOUT_MS} ms")
            time.sleep(0.001)
        publisher.update_connections()

    def close(self) -> None:
        """Release every port, then the services and the node."""
        for port in reversed(self.ports):
            port.delete()
        self.ports.clear()
        self.factories.clear()
        self.node = None


def iceoryx2_cleanup() -> None:
    """Remove what killed iceoryx2 processes left behind (from the parent, after a row)."""
    import iceoryx2 as iox2  # type: ignore[import-untyped]

    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    try:
        node.try_cleanup_dead_nodes()
    finally:
        del node


class _Iceoryx2Channel(Channel):
    """iceoryx2 publish-subscribe (IPC service) of byte slices, plus an event service: the
    publisher loans a sample, copies the message in, sends it and notifies; a subscriber
    takes every sample waiting and sleeps on its listener when there is none. Dicts travel
    pickled (iceoryx2 carries bytes or fixed C layouts)."""

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._name = f"shmipc-bench/fanout/{os.getpid()}/{secrets.token_hex(4)}"

    def _open(self) -> tuple[Iceoryx2Ports, Any, Any]:
        ports = Iceoryx2Ports()
        service = ports.service(
            self._name,
            ports.iox2.Slice[ctypes.c_uint8],
            subscribers=self.spec.consumers,
            backlog=BACKLOG,
        )
        return ports, service, ports.event(self._name + "/event")

    def sender(self, producer: int) -> Sender:
        ports, service, event = self._open()
        publisher = ports.publisher(service, max(4 * self.spec.message_size, 256))
        notify = ports.port(event.notifier_builder().create()).notify
        ports.wait_for_subscribers(service, publisher, self.spec.consumers)
        loan, memmove = publisher.loan_slice_uninit, ctypes.memmove

        def send_bytes(data: bytes) -> None:
            sample = loan(len(data))
            memmove(sample.payload_ptr, data, len(data))
            sample.assume_init().send()
            notify()

        send_bytes(_IOX_HELLO)  # each subscriber takes it before the start barrier
        send: Callable[[Any], object] = send_bytes
        if self.spec.objects:
            dumps, protocol = pickle.dumps, pickle.HIGHEST_PROTOCOL

            def send(obj: Any) -> None:
                send_bytes(dumps(obj, protocol))

        end = end_mark(self.spec)

        def finish() -> None:
            send(end)

        return Sender(send=send, finish=finish, close=ports.close)

    def receiver(self, consumer: int) -> Receiver:
        ports, service, event = self._open()
        subscriber = ports.port(service.subscriber_builder().buffer_size(BACKLOG).create())
        wait = ports.waiter(ports.port(event.listener_builder().create()))
        receive, string_at = subscriber.receive, ctypes.string_at

        def recv_bytes() -> bytes:
            while True:
                sample = receive()
                if sample is not None:
                    return string_at(sample.payload_ptr, sample.header.number_of_elements)
                wait()

        deadline = time.monotonic() + CONNECT_TIMEOUT_MS / 1000
        while not subscriber.has_samples():  # the publisher's hello: see _IOX_HELLO
            if time.monotonic() > deadline:
                raise TimeoutError(f"no hello from the publisher in {CONNECT_TIMEOUT_MS} ms")
            wait()
        if recv_bytes() != _IOX_HELLO:
            raise RuntimeError("the first sample was not the publisher's hello")

        recv: Callable[[], Any] = recv_bytes
        if self.spec.objects:
            loads = pickle.loads

            def recv() -> Any:
                return loads(recv_bytes())

        return Receiver(recv=recv, ends=1, close=ports.close)

    def close(self, broken: bool = False) -> None:
        if broken:
            iceoryx2_cleanup()


# --- judging ---------------------------------------------------------------------------------


def judge(consumers: Sequence[dict[str, Any]], per_subscriber: int) -> tuple[Verdict, str]:
    """Every subscriber on its own: all ``per_subscriber`` messages of the one publisher,
    exactly once, in order. The verdicts summed, and which subscribers failed."""
    verdicts = [
        check_ordered(r["seqs"], 1, per_subscriber, corrupt=r.get("corrupt", 0)) for r in consumers
    ]
    failed = [f"subscriber {i}: {v.describe()}" for i, v in enumerate(verdicts) if not v.ok]
    return combine(verdicts), "; ".join(failed)


# --- the rows --------------------------------------------------------------------------------


def _import_check(module: str) -> Callable[[], str | None]:
    def unavailable() -> str | None:
        try:
            importlib.import_module(module)
        except Exception as exc:
            return f"cannot import {module}: {exc}"
        return None

    return unavailable


TRANSPORTS: tuple[Transport, ...] = (
    Transport(
        key="pyzmq",
        label="pyzmq XPUB/SUB",
        make=_ZmqPubSubChannel,
        serialisation="send/recv for bytes, send_pyobj/recv_pyobj (pickle) for dicts; ipc://, "
        f"XPUB_NODROP, high-water mark {BACKLOG} (blocks, never drops)",
        unavailable=_import_check("zmq"),
        kind="fanout",
    ),
    Transport(
        key="iceoryx2",
        label="iceoryx2 pub/sub",
        make=_Iceoryx2Channel,
        serialisation="loan_slice_uninit + copy in + send + notify; receive (string_at) and "
        f"wait on an event listener when empty; dicts pickled; subscriber buffer {BACKLOG}, "
        "RetryUntilDelivered, no safe overflow",
        unavailable=_import_check("iceoryx2"),
        kind="fanout",
    ),
    Transport(
        key="shmipc",
        label="shmipc Topic",
        make=_TopicChannel,
        serialisation='Topic.create(policy="block"): publish_bytes/receive_bytes for bytes, '
        "publish/receive (msgpack codec) for dicts",
        unavailable=_topic_unavailable,
        kind="fanout",
    ),
)
