"""The contenders: one adapter per transport, all behind the same small channel interface.

A :class:`Channel` is made in the parent before it forks; each child opens its own end with
:meth:`Channel.sender` or :meth:`Channel.receiver`. Ends hand the workloads the transport's own
bound methods (``q.put_bytes``, ``conn.recv_bytes``, ``sock.send``...), so the hot loop pays for
the transport and nothing of ours. Each adapter serialises the way a user of that transport
would; :attr:`Transport.serialisation` says how, for the report.

End of stream. A shared queue (multiprocessing.Queue, faster-fifo, shmipc) may hand any
producer's message to any consumer, so no producer can tell a consumer "that was all": when
every producer has flushed and said so, the parent posts one end mark per consumer
(:meth:`Channel.end_streams`); FIFO order puts it behind every message. (Its reaction time, a
wake-up and a put, well under a millisecond, is inside the timed span.) Meshes of point-to-point
links (Pipe, pyzmq) carry the end mark in-band: each producer closes each of its links with
one, and a consumer stops after one per producer.

A transport that cannot be imported is reported by :meth:`Transport.unavailable` and skipped.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import multiprocessing
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from typing import Any

from .verify import END

__all__ = [
    "BATCH",
    "TRANSPORTS",
    "Channel",
    "ChannelSpec",
    "Receiver",
    "Sender",
    "Transport",
    "end_mark",
    "load_shmipc_queue",
]

#: Items per put_many/get_many call in the batched variants.
BATCH = 256
#: How long a pyzmq producer waits for its connections before the start barrier.
CONNECT_TIMEOUT_MS = 10_000
#: Messages at least this large get the large-message capacity.
LARGE_MESSAGE = 64 << 10

_CTX = multiprocessing.get_context("fork")


def _noop() -> None:
    """Nothing to do."""


@dataclass(frozen=True)
class ChannelSpec:
    """What a channel must carry: its fan-in, fan-out and messages."""

    producers: int = 1
    consumers: int = 1
    objects: bool = False  #: Python objects (dicts) rather than bytes
    message_size: int = 64  #: largest payload in bytes (an estimate for objects)

    @property
    def capacity(self) -> int:
        """Bytes a bounded channel may hold: 1 MiB, or 8 MiB (eight messages) for large ones.

        The same bound for every transport. Eight 1 MiB messages in flight keep a stream
        going while the buffer stays in the CPU cache; a 64 MiB bound makes every copy go to
        memory (see docs/performance.md for both)."""
        return 8 << 20 if self.message_size >= LARGE_MESSAGE else 1 << 20

    @property
    def capacity_messages(self) -> int:
        """The same bound in messages, for transports bounded by count."""
        return max(2, self.capacity // max(self.message_size, 1))


def end_mark(spec: ChannelSpec) -> Any:
    """The end-of-stream mark for a channel: ``None`` for objects, :data:`END` for bytes."""
    return None if spec.objects else END


@dataclass
class Sender:
    """A producer's end of a channel, opened in the producer's process."""

    send: Callable[[Any], object]  #: send one message
    finish: Callable[[], None]  #: this producer is done: flush, end in-band links
    close: Callable[[], None] = _noop  #: release the end, once the whole row is over
    send_many: Callable[[list[Any]], object] | None = None  #: batched variants only
    #: write one message made of these parts; in place where the transport can
    send_parts: Callable[..., object] | None = None
    #: (reserve(n) -> writable view, commit()): small messages and ping-pongs are then
    #: written in place (the zero-copy variants only)
    in_place: tuple[Callable[[int], Any], Callable[[], object]] | None = None
    #: the in-place loop keeps each view in a variable until the next one replaces it (the
    #: common way to write it), instead of dropping it before commit
    held: bool = False

    def __post_init__(self) -> None:
        if self.send_parts is None:
            send = self.send

            def send_parts(*parts: bytes) -> object:
                return send(b"".join(parts))

            self.send_parts = send_parts


@dataclass
class Receiver:
    """A consumer's end of a channel, opened in the consumer's process."""

    recv: Callable[[], Any]  #: receive one message, blocking
    ends: int  #: end marks that close this consumer's stream
    close: Callable[[], None] = _noop
    recv_many: Callable[[], list[Any]] | None = None  #: batched variants only
    #: call fn on the next message and return its result; in place where the transport can
    recv_with: Callable[[Callable[[Any], Any]], Any] | None = None
    #: (peek() -> read-only view, release()): small messages and ping-pongs are then read
    #: in place (the zero-copy variants only)
    in_place: tuple[Callable[[], Any], Callable[[], object]] | None = None
    #: as Sender.held, for peek/release; in_place is then (peek_next, release), and the loop
    #: releases only its last view
    held: bool = False

    def __post_init__(self) -> None:
        if self.recv_with is None:
            recv = self.recv

            def recv_with(fn: Callable[[Any], Any]) -> Any:
                return fn(recv())

            self.recv_with = recv_with


class Channel(ABC):
    """One producers-to-consumers channel, made in the parent before forking."""

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def sender(self, producer: int) -> Sender:
        """Open producer ``producer``'s end (in the producer's process)."""

    @abstractmethod
    def receiver(self, consumer: int) -> Receiver:
        """Open consumer ``consumer``'s end (in the consumer's process)."""

    def end_streams(self, timeout: float) -> None:  # noqa: B027 - meshes end in-band
        """In the parent, once every producer has finished: end every consumer's stream."""

    def close(self, broken: bool = False) -> None:  # noqa: B027 - most need nothing
        """In the parent, after the row; ``broken`` when children were killed."""


# --- shared queues -----------------------------------------------------------------------


class _SharedQueueChannel(Channel):
    """A queue any producer puts into and any consumer takes from; the parent ends streams."""

    def receiver(self, consumer: int) -> Receiver:
        return self._receiver()

    @abstractmethod
    def _receiver(self) -> Receiver:
        """Open a consumer's end."""

    @abstractmethod
    def _post_end(self, timeout: float) -> None:
        """Post one end mark (from the parent)."""

    def end_streams(self, timeout: float) -> None:
        for _ in range(self.spec.consumers):
            self._post_end(timeout)


class _MpQueueChannel(_SharedQueueChannel):
    """``multiprocessing.Queue``: pickles in a feeder thread, one pipe, a lock per side."""

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        # Unbounded is the default users take; 1 MiB messages are bounded like shmipc's
        # 64 MiB, or a producer that outruns the pipe would buffer gigabytes.
        maxsize = spec.capacity_messages if spec.message_size >= LARGE_MESSAGE else 0
        self._q = _CTX.Queue(maxsize)

    def sender(self, producer: int) -> Sender:
        q = self._q

        def finish() -> None:
            q.close()
            q.join_thread()  # the feeder has written everything into the pipe

        return Sender(send=q.put, finish=finish)

    def _receiver(self) -> Receiver:
        return Receiver(recv=self._q.get, ends=1)

    def _post_end(self, timeout: float) -> None:
        self._q.put(end_mark(self.spec), timeout=timeout)

    def close(self, broken: bool = False) -> None:
        if broken:
            self._q.cancel_join_thread()  # never wait on a pipe nobody reads any more
        self._q.close()
        if not broken:
            self._q.join_thread()


class _FasterFifoChannel(_SharedQueueChannel):
    """faster-fifo: pickles, then copies into a shared circular buffer under a mutex."""

    def __init__(self, spec: ChannelSpec, *, batched: bool = False) -> None:
        super().__init__(spec)
        import faster_fifo

        self._q = faster_fifo.Queue(max_size_bytes=spec.capacity)
        self._batched = batched

    def sender(self, producer: int) -> Sender:
        q = self._q
        return Sender(send=q.put, finish=_noop, send_many=q.put_many if self._batched else None)

    def _receiver(self) -> Receiver:
        q = self._q
        many = partial(q.get_many, max_messages_to_get=BATCH) if self._batched else None
        return Receiver(recv=q.get, ends=1, recv_many=many)

    def _post_end(self, timeout: float) -> None:
        self._q.put(end_mark(self.spec), timeout=timeout)


#: Keyword arguments every shmipc.Queue the benchmark makes gets (``--spin-ns`` sets
#: ``spin_ns``); empty: the Queue's own defaults, which is what the published tables use.
SHMIPC_QUEUE_OPTIONS: dict[str, Any] = {}


def load_shmipc_queue() -> type:
    """shmipc's Queue class: ``shmipc.Queue``, or ``shmipc.queue.Queue`` until it is exported;
    with :data:`SHMIPC_QUEUE_OPTIONS` set, a subclass that passes them to every queue."""
    import shmipc

    cls = getattr(shmipc, "Queue", None)
    if cls is None:
        cls = importlib.import_module("shmipc.queue").Queue
    if not SHMIPC_QUEUE_OPTIONS:
        return cls
    options = dict(SHMIPC_QUEUE_OPTIONS)

    class Configured(cls):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**options, **kwargs})

    Configured.__name__ = Configured.__qualname__ = cls.__name__
    return Configured


_ZERO_COPY_METHODS = ("reserve", "commit", "peek", "release")


class _ShmipcChannel(_SharedQueueChannel):
    """shmipc.Queue: bytes raw (put_bytes/get_bytes), objects through its msgpack codec."""

    def __init__(self, spec: ChannelSpec, *, style: str = "plain") -> None:
        super().__init__(spec)
        self._style = style
        extra = {"spsc": True} if style == "spsc" else {}
        self._q = load_shmipc_queue()(maxsize=0, capacity=spec.capacity, **extra)

    def sender(self, producer: int) -> Sender:
        q = self._q
        if self._style == "spsc":
            # The producer thread owns the producer side, so it posts its own end mark (the
            # parent would be refused).
            send, end = (q.put, end_mark(self.spec)) if self.spec.objects else (q.put_bytes, END)
            return Sender(send=send, finish=lambda: send(end))
        if self._style == "batched":
            return Sender(send=q.put, finish=_noop, send_many=q.put_many)
        if self.spec.objects:
            return Sender(send=q.put, finish=_noop)
        if self._style in ("zero-copy", "zero-copy-held"):
            held = self._style == "zero-copy-held"
            return Sender(
                send=q.put_bytes,
                finish=_noop,
                send_parts=self._send_in_place_held if held else self._send_in_place,
                in_place=(q.reserve, q.commit),
                held=held,
            )
        return Sender(send=q.put_bytes, finish=_noop)

    @staticmethod
    def _fill(view: memoryview, parts: tuple[bytes, ...]) -> None:
        offset = 0
        for part in parts:
            end = offset + len(part)
            view[offset:end] = part
            offset = end

    def _send_in_place(self, *parts: bytes) -> None:
        """Reserve the record, write the parts straight into the ring, commit."""
        view = self._q.reserve(sum(map(len, parts)))
        self._fill(view, parts)
        del view  # drop our export of the ring before the record is published
        self._q.commit()

    def _send_in_place_held(self, *parts: bytes) -> None:
        """As _send_in_place, the view still held at commit (it is released then)."""
        view = self._q.reserve(sum(map(len, parts)))
        self._fill(view, parts)
        self._q.commit()

    def _receiver(self) -> Receiver:
        q = self._q
        if self._style == "batched":
            return Receiver(recv=q.get, ends=1, recv_many=partial(q.get_many, BATCH))
        if self.spec.objects:
            return Receiver(recv=q.get, ends=1)
        if self._style in ("zero-copy", "zero-copy-held"):
            held = self._style == "zero-copy-held"
            return Receiver(
                recv=q.get_bytes,
                ends=1,
                recv_with=self._recv_in_place_held if held else self._recv_in_place,
                in_place=(q.peek_next if held else q.peek, q.release),
                held=held,
            )
        return Receiver(recv=q.get_bytes, ends=1)

    def _recv_in_place(self, fn: Callable[[Any], Any]) -> Any:
        """Peek at the next record, let ``fn`` read it where it lies, release it."""
        view = self._q.peek()
        try:
            return fn(view)
        finally:
            del view
            self._q.release()

    def _recv_in_place_held(self, fn: Callable[[Any], Any]) -> Any:
        """As _recv_in_place, the view still held at release (it is released then)."""
        view = self._q.peek()
        try:
            return fn(view)
        finally:
            self._q.release()

    def _post_end(self, timeout: float) -> None:
        if self._style == "spsc":
            return  # posted by the producer itself (see sender)
        if self._style == "batched" or self.spec.objects:
            self._q.put(end_mark(self.spec), timeout=timeout)
        else:
            self._q.put_bytes(END)

    def close(self, broken: bool = False) -> None:
        self._q.close()


# --- meshes of point-to-point links ------------------------------------------------------


def _round_robin(sends: list[Callable[[Any], object]]) -> Callable[[Any], object]:
    """Send each message on the next link in turn (what a PUSH socket does)."""
    if len(sends) == 1:
        return sends[0]
    turn = itertools.cycle(sends)

    def send(message: Any) -> object:
        return next(turn)(message)

    return send


class _PipeChannel(Channel):
    """``multiprocessing.Pipe`` (one-way): a pipe per producer-consumer pair.

    A Pipe has exactly one writer and one reader, so fan-in and fan-out are a mesh: producers
    send round-robin over their links, consumers ``wait()`` on theirs.
    """

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._links = [
            [_CTX.Pipe(duplex=False) for _ in range(spec.consumers)] for _ in range(spec.producers)
        ]

    def sender(self, producer: int) -> Sender:
        conns = [w for _, w in self._links[producer]]
        objects = self.spec.objects
        sends = [c.send if objects else c.send_bytes for c in conns]

        def finish() -> None:
            for send in sends:
                send(end_mark(self.spec))

        return Sender(send=_round_robin(sends), finish=finish)

    def receiver(self, consumer: int) -> Receiver:
        conns: list[Connection] = [links[consumer][0] for links in self._links]
        objects = self.spec.objects
        if len(conns) == 1:
            return Receiver(recv=conns[0].recv if objects else conns[0].recv_bytes, ends=1)
        end = end_mark(self.spec)
        live = list(conns)
        ready: deque[Any] = deque()

        def recv() -> Any:
            while not ready:
                ready.extend(wait(live))
            conn = ready.popleft()
            message = conn.recv() if objects else conn.recv_bytes()
            if message == end:
                live.remove(conn)
            return message

        return Receiver(recv=recv, ends=len(conns))

    def close(self, broken: bool = False) -> None:
        for links in self._links:
            for r, w in links:
                r.close()
                w.close()


class _ZmqChannel(Channel):
    """pyzmq PUSH/PULL over ipc:// in a temporary directory.

    Each consumer binds one PULL socket (which fair-queues its producers); each producer
    connects one PUSH socket per consumer and sends round-robin, which is what a PUSH socket
    connected to every consumer does, but lets each producer end every consumer's stream.
    Sockets and contexts are made in the children, never inherited.
    """

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._dir = tempfile.mkdtemp(prefix="shmipc-bench-zmq-")
        self._addresses = [f"ipc://{self._dir}/c{c}" for c in range(spec.consumers)]
        # Bound in messages like the others are bound in bytes (default HWM is 1000).
        self._hwm = (
            max(1, spec.capacity_messages // 2) if spec.message_size >= LARGE_MESSAGE else 1000
        )

    def sender(self, producer: int) -> Sender:
        import zmq

        ctx = zmq.Context()
        socks = [self._connect(ctx, address) for address in self._addresses]
        objects = self.spec.objects
        sends = [s.send_pyobj if objects else s.send for s in socks]

        def finish() -> None:
            for send in sends:
                send(end_mark(self.spec))

        def close() -> None:  # only once the consumers have everything: see harness
            for sock in socks:
                sock.close(linger=0)
            ctx.term()

        return Sender(send=_round_robin(sends), finish=finish, close=close)

    def _connect(self, ctx: Any, address: str) -> Any:
        """A PUSH socket connected to ``address``, returned once the connection is up.

        Connecting before the consumer has bound is fine for zmq, but the retry would then
        land inside the timed span; waiting here keeps set-up out of it.
        """
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        sock = ctx.socket(zmq.PUSH)
        sock.sndhwm = self._hwm
        sock.reconnect_ivl = 5  # ms: retry quickly while the consumer is still binding
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        sock.connect(address)
        if not monitor.poll(CONNECT_TIMEOUT_MS):
            raise TimeoutError(f"no connection to {address} within {CONNECT_TIMEOUT_MS} ms")
        recv_monitor_message(monitor)
        sock.disable_monitor()
        monitor.close()
        return sock

    def receiver(self, consumer: int) -> Receiver:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.rcvhwm = self._hwm
        sock.bind(self._addresses[consumer])

        def close() -> None:
            sock.close(linger=0)
            ctx.term()

        recv = sock.recv_pyobj if self.spec.objects else sock.recv
        return Receiver(recv=recv, ends=self.spec.producers, close=close)

    def close(self, broken: bool = False) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


# --- the registry ------------------------------------------------------------------------


def _import_check(module: str) -> Callable[[], str | None]:
    """A check that ``module`` imports."""

    def unavailable() -> str | None:
        try:
            importlib.import_module(module)
        except Exception as exc:
            return f"cannot import {module}: {exc}"
        return None

    return unavailable


def _shmipc_unavailable(*methods: str, option: str | None = None) -> Callable[[], str | None]:
    """A check that shmipc's Queue imports, its class defines ``methods`` and its
    constructor takes the keyword ``option``."""

    def unavailable() -> str | None:
        try:
            cls = load_shmipc_queue()
        except Exception as exc:
            return f"cannot import shmipc.Queue: {type(exc).__name__}: {exc}"
        missing = [m for m in methods if not hasattr(cls, m)]
        if missing:
            return f"shmipc.Queue has no {'/'.join(missing)}"
        if option is not None and option not in inspect.signature(cls).parameters:
            return f"shmipc.Queue takes no {option}="
        return None

    return unavailable


def _always() -> str | None:
    return None


@dataclass(frozen=True)
class Transport:
    """One row label of the report: a transport, used one way."""

    key: str  #: family name for ``--transports``
    label: str  #: row label
    make: Callable[[ChannelSpec], Channel]
    serialisation: str  #: how messages are sent, for the notes
    unavailable: Callable[[], str | None] = _always  #: why it cannot run, or None
    #: workloads this row runs (None: all of them)
    workloads: frozenset[str] | None = field(default=None)
    #: the kind of workload it runs: "stream" (a Channel), "fanout" or "arrays"
    kind: str = "stream"
    #: "copies" (a copying peer, for the arrays ratios), "reference" (memcpy: runs whatever
    #: --transports says, as a measure of the machine)
    tags: frozenset[str] = field(default=frozenset())

    def runs(self, workload: Any) -> bool:
        """True when this row belongs in ``workload``'s part of the table (a Workload, or the
        name of a stream workload)."""
        name = getattr(workload, "name", workload)
        kind = getattr(workload, "kind", "stream")
        return kind == self.kind and (self.workloads is None or name in self.workloads)


#: Every row, in report order. The first is the baseline the ratios divide by.
TRANSPORTS: tuple[Transport, ...] = (
    Transport(
        key="mp-queue",
        label="multiprocessing.Queue",
        make=_MpQueueChannel,
        serialisation="put(obj)/get(): pickle (bytes are pickled too)",
    ),
    Transport(
        key="mp-pipe",
        label="multiprocessing.Pipe",
        make=_PipeChannel,
        serialisation="send_bytes/recv_bytes for bytes, send/recv (pickle) for dicts; "
        "one pipe per producer-consumer pair",
    ),
    Transport(
        key="faster-fifo",
        label="faster-fifo",
        make=_FasterFifoChannel,
        serialisation="put(obj)/get(): pickle",
        unavailable=_import_check("faster_fifo"),
    ),
    Transport(
        key="faster-fifo",
        label="faster-fifo (batched)",
        make=partial(_FasterFifoChannel, batched=True),
        serialisation=f"put_many/get_many, {BATCH} per call: pickle",
        unavailable=_import_check("faster_fifo"),
        workloads=frozenset({"64B"}),
    ),
    Transport(
        key="pyzmq",
        label="pyzmq PUSH/PULL",
        make=_ZmqChannel,
        serialisation="send/recv for bytes, send_pyobj/recv_pyobj (pickle) for dicts; ipc://",
        unavailable=_import_check("zmq"),
    ),
    Transport(
        key="shmipc",
        label="shmipc",
        make=_ShmipcChannel,
        serialisation="put_bytes/get_bytes for bytes, put/get (msgpack codec) for dicts",
        unavailable=_shmipc_unavailable("put", "get", "put_bytes", "get_bytes"),
    ),
    Transport(
        key="shmipc",
        label="shmipc (batched)",
        make=partial(_ShmipcChannel, style="batched"),
        serialisation=f"put_many/get_many, {BATCH} per call: bytes as they are",
        unavailable=_shmipc_unavailable("put_many", "get_many"),
        workloads=frozenset({"64B"}),
    ),
    Transport(
        key="shmipc",
        label="shmipc (zero-copy)",
        make=partial(_ShmipcChannel, style="zero-copy"),
        serialisation="reserve(n)/fill in place/commit() and peek()/read in place/release()",
        unavailable=_shmipc_unavailable("put_bytes", *_ZERO_COPY_METHODS),
        workloads=frozenset({"64B", "1MiB", "pingpong"}),
    ),
    Transport(
        key="shmipc",
        label="shmipc (zero-copy, held)",
        make=partial(_ShmipcChannel, style="zero-copy-held"),
        serialisation=(
            "as zero-copy, each view kept in a variable until the next replaces it; "
            "the consumer steps with peek_next()"
        ),
        unavailable=_shmipc_unavailable("put_bytes", *_ZERO_COPY_METHODS, "peek_next"),
        workloads=frozenset({"64B", "1MiB", "pingpong"}),
    ),
    Transport(
        key="shmipc",
        label="shmipc (spsc)",
        make=partial(_ShmipcChannel, style="spsc"),
        serialisation="Queue(spsc=True): as shmipc, with no lock per message (1 -> 1 only)",
        unavailable=_shmipc_unavailable("put", "get", "put_bytes", "get_bytes", option="spsc"),
        workloads=frozenset({"64B", "dict", "pingpong"}),
    ),
)
