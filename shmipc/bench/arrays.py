"""Large arrays: round trips of float64 arrays between two processes, every transfer checked.

A round trip is two transfers. In each, the sending side gets an outgoing array (its own
private array, allocated once, for the transports that copy; a fresh loan for the ones that
lend shared memory), stamps it, sends it; the receiving side reads the stamp, which touches
every page of what it received, checks it, lets the array go, and sends a reply of the same
size with the same sequence number the same way. (A reply is a new array, not the received
one passed on: passing on a received zero-copy view would force a copy into the row that
does not need one; the copying rows copy both ways either way.)

The stamp (:class:`Stamp`) writes one float64 per 4 KiB page: the transfer's sequence number
plus the page index, and the sequence number again in the last element. The receiver sums
the per-page samples and compares the sum, the first sample and the last element with what
that sequence number gives: a sample checksum of every page (a wrong, stale, truncated or
torn array fails it; a change inside a page between samples would not). The per-page work is
the same in every row.

The memcpy row is the machine's reference: ``numpy.copyto`` between two arrays of the same
size in one process (a 1 MiB pair stays in the CPU cache; 32 and 256 MiB go to memory). Its
GB/s is bytes copied per second; a transport's is payload bytes carried per second, both
directions counted (2 x size per round trip). The report divides copied-once rows by it.
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import os
import secrets
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from . import transports as _transports
from .fanout import Iceoryx2Ports, iceoryx2_cleanup
from .transports import CONNECT_TIMEOUT_MS, Channel, ChannelSpec, Receiver, Sender, Transport
from .verify import END, END_SEQ, Verdict, check_ordered, combine

__all__ = [
    "TRANSPORTS",
    "ArrayEnd",
    "ArrayLink",
    "Stamp",
    "judge",
    "load_buffer_pool",
    "roles",
    "warmup_rounds",
]

#: float64 elements per 4 KiB page: the stamp writes (and the receiver reads) one of each.
PAGE_ITEMS = 4096 // 8
#: A shmipc pool holds this many arrays of the row's size (plus slack for its bookkeeping).
POOL_ARRAYS = 4
POOL_SLACK = 16 << 20
#: Arrays in flight per direction that pyzmq and multiprocessing.Queue may buffer.
IN_FLIGHT = 2

_CTX = multiprocessing.get_context("fork")


def _np() -> Any:
    import numpy

    return numpy


def warmup_rounds(size: int) -> int:
    """Untimed round trips first: 5 at 1 MiB, 2 at 32 MiB, 1 at 256 MiB."""
    return max(1, min(5, (64 << 20) // max(size, 1)))


class Stamp:
    """Writes and checks the per-page stamp of ``items``-element float64 arrays."""

    def __init__(self, items: int) -> None:
        np = _np()
        self.items = items
        self.pages = -(-items // PAGE_ITEMS)
        self._base = np.arange(self.pages, dtype=np.float64)
        self._base_sum = float(self.pages * (self.pages - 1) // 2)
        self._add = np.add

    def write(self, out: Any, seq: int) -> None:
        """Stamp ``out`` with sequence number ``seq`` (touches every page)."""
        self._add(self._base, float(seq), out=out[::PAGE_ITEMS])
        out[-1] = seq

    def read(self, got: Any) -> tuple[int, bool]:
        """(sequence number, intact) of a received array; reads one float64 per page."""
        if got.shape != (self.items,) or got.dtype.str != "<f8":
            return -1, False
        samples = got[::PAGE_ITEMS]
        first = float(samples[0])
        total = float(samples.sum())
        intact = (
            first.is_integer()
            and 0 <= first < END_SEQ
            and total == self._base_sum + self.pages * first
            and float(got[-1]) == first
        )
        return (int(first) if intact else -1), intact


# --- the ends ------------------------------------------------------------------------------


class ArrayEnd(ABC):
    """One side of a two-way array link, opened in its process."""

    @abstractmethod
    def outgoing(self) -> Any:
        """A writable array for the next transfer (private and reused, or a fresh loan)."""

    @abstractmethod
    def send(self, out: Any) -> None:
        """Send ``out`` (the array :meth:`outgoing` gave; the caller drops it afterwards)."""

    @abstractmethod
    def receive(self) -> Any:
        """The next array from the other side, or None at the end of the stream. It stays
        valid until :meth:`release`; the caller drops every reference to it first."""

    def release(self) -> None:  # noqa: B027 - most have nothing to give back
        """Give back what :meth:`receive` returned."""

    @abstractmethod
    def send_end(self) -> None:
        """Tell the other side that no more arrays come (and flush)."""

    def close(self) -> None:  # noqa: B027 - most have nothing to release
        """Release the end, once the whole row is over."""


class ArrayLink(Channel):
    """A two-way array link, made in the parent; each side opens its :meth:`end`. Side 0
    starts every round trip, side 1 replies."""

    reference = False  #: the memcpy row: one process, no ends

    def sender(self, producer: int) -> Sender:
        raise TypeError("an array link has ends, not senders")

    def receiver(self, consumer: int) -> Receiver:
        raise TypeError("an array link has ends, not receivers")

    @property
    def items(self) -> int:
        """float64 elements of each array."""
        return self.spec.message_size // 8

    @abstractmethod
    def end(self, side: int) -> ArrayEnd:
        """Open side ``side`` (0 or 1) in the calling process."""


class _PrivateSource:
    """Copying ends send from one private array, allocated (and faulted in) once."""

    def __init__(self, items: int) -> None:
        self._src = _np().ones(items, dtype="<f8")

    def outgoing(self) -> Any:
        return self._src


# --- shmipc ----------------------------------------------------------------------------------


def load_buffer_pool() -> Any:
    """shmipc's BufferPool class (``shmipc.buffers.BufferPool``; ImportError until it exists)."""
    return importlib.import_module("shmipc.buffers").BufferPool


def _shmipc_pool_unavailable(*methods: str) -> Callable[[], str | None]:
    """A check that shmipc.buffers.BufferPool imports, Queue takes ``pool=`` and has
    ``methods``."""

    def unavailable() -> str | None:
        try:
            load_buffer_pool()
            cls = _transports.load_shmipc_queue()
        except Exception as exc:
            return f"cannot import shmipc.buffers.BufferPool: {type(exc).__name__}: {exc}"
        if "pool" not in inspect.signature(cls).parameters and not hasattr(cls, "create"):
            return "shmipc.Queue takes no pool="
        missing = [m for m in methods if not hasattr(cls, m)]
        return f"shmipc.Queue has no {'/'.join(missing)}" if missing else None

    return unavailable


class _ShmipcEnd(ArrayEnd):
    def __init__(self, out: Any, inp: Any, items: int, loaned: bool) -> None:
        self._out, self._inp, self._items, self._loaned = out, inp, items, loaned
        self._src = None if loaned else _np().ones(items, dtype="<f8")

    def outgoing(self) -> Any:
        if self._loaned:
            return self._out.loan_array((self._items,), "<f8")
        return self._src

    def send(self, out: Any) -> None:
        self._out.put(out)

    def receive(self) -> Any:
        return self._inp.get()

    def send_end(self) -> None:
        self._out.put(None)


class _ShmipcArrayLink(ArrayLink):
    """shmipc.Queue with a BufferPool: ``loaned`` puts arrays from ``q.loan_array`` (a
    handle travels); otherwise ``q.put(array)`` copies it once into a pool block. ``get()``
    gives a read-only array on the block either way."""

    def __init__(self, spec: ChannelSpec, *, loaned: bool) -> None:
        super().__init__(spec)
        self._loaned = loaned
        # One class of blocks as large as the arrays (the default plan caps its largest class
        # at an eighth of the pool, and a larger array takes a dedicated segment per transfer:
        # a new mapping to fault in every time, which is not what this row measures).
        block = max(4096, 1 << (spec.message_size - 1).bit_length())
        self._pool = load_buffer_pool().create(
            size=POOL_ARRAYS * block + POOL_SLACK, classes={block: POOL_ARRAYS}
        )
        queue_cls = _transports.load_shmipc_queue()
        make = getattr(queue_cls, "create", queue_cls)
        self._queues: list[Any] = []
        try:
            for _ in range(2):  # 0: side 0 -> side 1, 1: back
                self._queues.append(make(pool=self._pool))
        except BaseException:
            self.close(broken=True)
            raise

    def end(self, side: int) -> ArrayEnd:
        return _ShmipcEnd(self._queues[side], self._queues[1 - side], self.items, self._loaned)

    def close(self, broken: bool = False) -> None:
        for q in self._queues:
            q.close()
        self._pool.unlink()  # the name first: a closed handle can no longer unlink
        self._pool.close()


# --- multiprocessing.Queue -------------------------------------------------------------------


def _use_pickle5() -> None:
    """Make this process's multiprocessing.Queue pickle with protocol 5 (numpy then writes
    its data straight into the pickle stream, and reads it back without a second copy).
    Python before 3.14 uses protocol 4; only the forked benchmark child is changed."""
    import multiprocessing.queues as mp_queues
    from multiprocessing.reduction import ForkingPickler

    class Pickle5(ForkingPickler):
        @classmethod
        def dumps(cls, obj: Any, protocol: int | None = None) -> Any:
            return super().dumps(obj, 5)

    mp_queues._ForkingPickler = Pickle5  # type: ignore[attr-defined]


class _MpQueueEnd(_PrivateSource, ArrayEnd):
    def __init__(self, out: Any, inp: Any, items: int) -> None:
        super().__init__(items)
        _use_pickle5()
        self._out, self._inp = out, inp

    def send(self, out: Any) -> None:
        self._out.put(out)

    def receive(self) -> Any:
        return self._inp.get()

    def send_end(self) -> None:
        self._out.put(None)
        self._out.close()
        self._out.join_thread()  # the feeder has written everything into the pipe


class _MpQueueArrayLink(ArrayLink):
    """multiprocessing.Queue (pickle protocol 5, see :func:`_use_pickle5`), bounded."""

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._queues = [_CTX.Queue(IN_FLIGHT) for _ in range(2)]

    def end(self, side: int) -> ArrayEnd:
        return _MpQueueEnd(self._queues[side], self._queues[1 - side], self.items)

    def close(self, broken: bool = False) -> None:
        for q in self._queues:
            if broken:
                q.cancel_join_thread()
            q.close()


# --- multiprocessing.shared_memory, a segment per array ---------------------------------------


class _SharedMemoryEnd(_PrivateSource, ArrayEnd):
    """Each transfer: create a segment, copy the array in, send (name, shape, dtype) down a
    pipe; the receiver attaches, reads, closes and unlinks it."""

    def __init__(self, out: Any, inp: Any, items: int, prefix: str) -> None:
        super().__init__(items)
        self._out, self._inp, self._prefix = out, inp, prefix
        self._count = 0
        self._held: Any = None

    def send(self, out: Any) -> None:
        from multiprocessing import resource_tracker, shared_memory

        name = f"{self._prefix}{self._count}"
        self._count += 1
        shm = shared_memory.SharedMemory(name=name, create=True, size=out.nbytes)
        # The receiver owns it from now on (it unlinks it, which unregisters its own attach).
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        dst = _np().ndarray(out.shape, out.dtype, buffer=shm.buf)
        _np().copyto(dst, out)
        del dst
        shm.close()
        self._out.send((name, out.shape, out.dtype.str))

    def receive(self) -> Any:
        from multiprocessing import shared_memory

        handle = self._inp.recv()
        if handle is None:
            return None
        name, shape, dtype = handle
        self._held = shared_memory.SharedMemory(name=name)
        return _np().ndarray(shape, dtype, buffer=self._held.buf)

    def release(self) -> None:
        shm, self._held = self._held, None
        shm.close()
        shm.unlink()

    def send_end(self) -> None:
        self._out.send(None)


class _SharedMemoryArrayLink(ArrayLink):
    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._prefix = f"shmipc-bench-{os.getpid()}-{secrets.token_hex(3)}-"
        self._pipes = [_CTX.Pipe(duplex=False) for _ in range(2)]  # (reader, writer)

    def end(self, side: int) -> ArrayEnd:
        out, inp = self._pipes[side][1], self._pipes[1 - side][0]
        return _SharedMemoryEnd(out, inp, self.items, f"{self._prefix}{side}-")

    def close(self, broken: bool = False) -> None:
        for reader, writer in self._pipes:
            reader.close()
            writer.close()
        for leftover in os.listdir("/dev/shm"):  # a killed row's segments
            if leftover.startswith(self._prefix):
                os.unlink(os.path.join("/dev/shm", leftover))


# --- pyzmq, copy=False -----------------------------------------------------------------------


def _zmq_connect(ctx: Any, address: str, hwm: int) -> Any:
    """A PUSH socket connected to ``address``, returned once the connection is up."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    sock = ctx.socket(zmq.PUSH)
    sock.sndhwm = hwm
    sock.reconnect_ivl = 5
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
    sock.connect(address)
    if not monitor.poll(CONNECT_TIMEOUT_MS):
        raise TimeoutError(f"no connection to {address} within {CONNECT_TIMEOUT_MS} ms")
    recv_monitor_message(monitor)
    sock.disable_monitor()
    monitor.close()
    return sock


class _ZmqEnd(_PrivateSource, ArrayEnd):
    def __init__(self, inbox: str, outbox: str, items: int) -> None:
        super().__init__(items)
        import zmq

        self._ctx = zmq.Context()
        self._inp = self._ctx.socket(zmq.PULL)
        self._inp.rcvhwm = IN_FLIGHT
        self._inp.bind(inbox)
        self._out = _zmq_connect(self._ctx, outbox, IN_FLIGHT)
        self._frombuffer = _np().frombuffer

    def send(self, out: Any) -> None:
        self._out.send(out, copy=False)

    def receive(self) -> Any:
        frame = self._inp.recv(copy=False)
        if len(frame) == len(END):
            return None
        return self._frombuffer(frame.buffer, dtype="<f8")

    def send_end(self) -> None:
        self._out.send(END)

    def close(self) -> None:
        self._out.close(linger=0)
        self._inp.close(linger=0)
        self._ctx.term()


class _ZmqArrayLink(ArrayLink):
    """pyzmq PUSH/PULL over ipc://, one pair per direction; ``send(array, copy=False)``
    (libzmq writes from the array itself) and ``recv(copy=False)`` (an array on the frame)."""

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._dir = tempfile.mkdtemp(prefix="shmipc-bench-zmq-")
        self._inboxes = [f"ipc://{self._dir}/side{side}" for side in range(2)]

    def end(self, side: int) -> ArrayEnd:
        return _ZmqEnd(self._inboxes[side], self._inboxes[1 - side], self.items)

    def close(self, broken: bool = False) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


# --- iceoryx2 loans --------------------------------------------------------------------------


class _Iceoryx2End(ArrayEnd):
    """Loans a sample as big as the array, stamps it in place, sends it and notifies."""

    def __init__(self, base: str, side: int, items: int) -> None:
        import ctypes

        self._ports = ports = Iceoryx2Ports()
        payload = ports.iox2.Slice[ctypes.c_double]
        kw = {"subscribers": 1, "backlog": IN_FLIGHT}
        out_name, in_name = f"{base}/to{1 - side}", f"{base}/to{side}"
        inbound = ports.service(in_name, payload, **kw)
        self._subscriber = ports.port(inbound.subscriber_builder().buffer_size(IN_FLIGHT).create())
        self._wait = ports.waiter(
            ports.port(ports.event(in_name + "/event").listener_builder().create())
        )
        outbound = ports.service(out_name, payload, **kw)
        self._publisher = ports.publisher(outbound, items)
        notifier = ports.event(out_name + "/event").notifier_builder().create()
        self._notify = ports.port(notifier).notify
        ports.wait_for_subscribers(outbound, self._publisher, 1)
        self._view_type = ctypes.c_double * items
        self._items = items
        self._loan: Any = None
        self._held: Any = None

    def outgoing(self) -> Any:
        self._loan = self._publisher.loan_slice_uninit(self._items)
        return _np().frombuffer(self._view_type.from_address(self._loan.payload_ptr), "<f8")

    def send(self, out: Any) -> None:
        loan, self._loan = self._loan, None
        loan.assume_init().send()
        self._notify()

    def receive(self) -> Any:
        while True:
            sample = self._subscriber.receive()
            if sample is not None:
                break
            self._wait()
        if sample.header.number_of_elements != self._items:
            sample.delete()
            return None
        self._held = sample
        return _np().frombuffer(self._view_type.from_address(sample.payload_ptr), "<f8")

    def release(self) -> None:
        sample, self._held = self._held, None
        sample.delete()

    def send_end(self) -> None:
        self._publisher.loan_slice_uninit(1).assume_init().send()
        self._notify()

    def close(self) -> None:
        self._ports.close()


class _Iceoryx2ArrayLink(ArrayLink):
    """iceoryx2 publish-subscribe of float64 slices, a service per direction."""

    def __init__(self, spec: ChannelSpec) -> None:
        super().__init__(spec)
        self._base = f"shmipc-bench/arrays/{os.getpid()}/{secrets.token_hex(4)}"

    def end(self, side: int) -> ArrayEnd:
        return _Iceoryx2End(self._base, side, self.items)

    def close(self, broken: bool = False) -> None:
        if broken:
            iceoryx2_cleanup()


# --- memcpy ----------------------------------------------------------------------------------


class _MemcpyLink(ArrayLink):
    """Not a link: the memcpy reference runs in one process."""

    reference = True

    def end(self, side: int) -> ArrayEnd:
        raise TypeError("the memcpy reference has no ends")


# --- the children's roles ----------------------------------------------------------------------
# ``sync`` is the harness's _RowSync; each role returns (report, ends to close after the row).


def _pinger(sync: Any, link: ArrayLink, rounds: int, warmup: int) -> tuple[dict[str, Any], list]:
    end = link.end(0)
    stamp = Stamp(link.items)
    seqs, corrupt = array("Q"), 0
    clock, cpu_clock = time.perf_counter, time.process_time
    sync.start()
    t0, c0 = clock(), cpu_clock()
    for seq in range(warmup + rounds):
        if seq == warmup:
            t0, c0 = clock(), cpu_clock()
        out = end.outgoing()
        stamp.write(out, seq)
        end.send(out)
        del out
        got = end.receive()
        if got is None:
            raise RuntimeError(f"the other side ended the stream at round trip {seq}")
        back, intact = stamp.read(got)
        del got
        end.release()
        corrupt += not intact
        if intact:
            seqs.append(back)
    end.send_end()
    report = sync.stop(seqs=seqs.tobytes(), corrupt=corrupt)
    # The timed span (and the CPU counted) starts after the warm-up rounds.
    report["t0"], report["cpu"] = t0, cpu_clock() - c0
    return report, [end]


def _ponger(sync: Any, link: ArrayLink, warmup: int) -> tuple[dict[str, Any], list]:
    end = link.end(1)
    stamp = Stamp(link.items)
    seqs, corrupt = array("Q"), 0
    cpu_clock = time.process_time
    sync.start()
    c0 = cpu_clock()
    while True:
        if len(seqs) == warmup:
            c0 = cpu_clock()  # the first timed round trip starts
        got = end.receive()
        if got is None:
            break
        seq, intact = stamp.read(got)
        del got
        end.release()
        corrupt += not intact
        if intact:
            seqs.append(seq)
        out = end.outgoing()
        stamp.write(out, max(seq, 0))
        end.send(out)
        del out
    report = sync.stop(seqs=seqs.tobytes(), corrupt=corrupt)
    report["cpu"] = cpu_clock() - c0
    return report, [end]


def _copier(sync: Any, link: ArrayLink, copies: int, warmup: int) -> tuple[dict[str, Any], list]:
    np = _np()
    src = np.arange(link.items, dtype="<f8")
    dst = np.zeros_like(src)
    copyto, clock, cpu_clock = np.copyto, time.perf_counter, time.process_time
    sync.start()
    for _ in range(warmup):
        copyto(dst, src)
    t0, c0 = clock(), cpu_clock()
    for _ in range(copies):
        copyto(dst, src)
    t1, cpu = clock(), cpu_clock() - c0
    intact = bool(np.array_equal(dst[::PAGE_ITEMS], src[::PAGE_ITEMS]) and dst[-1] == src[-1])
    report = sync.stop(seqs=array("Q", range(copies)).tobytes(), corrupt=int(not intact))
    report["t0"], report["t1"], report["cpu"] = t0, t1, cpu
    return report, []


def roles(link: ArrayLink, count: int) -> tuple[list[tuple[str, Callable, tuple, bool]], int]:
    """The row's children as (name, target, args, producer), and the units they move
    (round trips, warm-up included; memcpy: copies)."""
    warmup = warmup_rounds(link.spec.message_size)
    if link.reference:
        return [("memcpy", _copier, (link, count, warmup), True)], count + warmup
    return [
        ("ping", _pinger, (link, count, warmup), True),
        ("pong", _ponger, (link, warmup), False),
    ], count + warmup


def judge(
    link: ArrayLink, reports: Sequence[dict[str, Any]], count: int, units: int
) -> tuple[Verdict, float, float]:
    """(verdict, elapsed seconds, payload bytes moved) of a finished row. Every transfer
    arrived once, in order, with its stamp intact; the timed span is the first side's
    (warm-up excluded)."""
    size = link.spec.message_size
    first = reports[0]
    elapsed = first["t1"] - first["t0"]
    if link.reference:
        verdict = check_ordered(first["seqs"], 1, count, corrupt=first["corrupt"])
        return verdict, elapsed, float(size * count)
    verdict = combine(check_ordered(r["seqs"], 1, units, corrupt=r["corrupt"]) for r in reports)
    return verdict, elapsed, float(2 * size * count)


# --- the rows ----------------------------------------------------------------------------------


def _numpy_and(module: str | None = None) -> Callable[[], str | None]:
    def unavailable() -> str | None:
        for name in ("numpy", module):
            if name is None:
                continue
            try:
                importlib.import_module(name)
            except Exception as exc:
                return f"cannot import {name}: {exc}"
        return None

    return unavailable


def _both(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    def unavailable() -> str | None:
        return next((r for r in (check() for check in checks) if r is not None), None)

    return unavailable


_COPIES = frozenset({"copies"})

TRANSPORTS: tuple[Transport, ...] = (
    Transport(
        key="memcpy",
        label="memcpy (numpy.copyto)",
        make=_MemcpyLink,
        serialisation="numpy.copyto between two arrays of the size in one process: the "
        "machine's copy bandwidth (GB/s of bytes copied)",
        unavailable=_numpy_and(),
        kind="arrays",
        tags=frozenset({"reference"}),
    ),
    Transport(
        key="mp-queue",
        label="multiprocessing.Queue",
        make=_MpQueueArrayLink,
        serialisation="put(array)/get(): pickle protocol 5 (in-band buffer), maxsize 2",
        unavailable=_numpy_and(),
        kind="arrays",
        tags=_COPIES,
    ),
    Transport(
        key="shared-memory",
        label="shared_memory + handles",
        make=_SharedMemoryArrayLink,
        serialisation="a new multiprocessing.shared_memory segment per array, copyto into "
        "it, (name, shape, dtype) down a Pipe; the receiver attaches, reads, unlinks",
        unavailable=_numpy_and(),
        kind="arrays",
        tags=_COPIES,
    ),
    Transport(
        key="pyzmq",
        label="pyzmq copy=False",
        make=_ZmqArrayLink,
        serialisation="PUSH/PULL over ipc://, send(array, copy=False), recv(copy=False) + "
        "numpy.frombuffer; high-water mark 2",
        unavailable=_numpy_and("zmq"),
        kind="arrays",
        tags=_COPIES,
    ),
    Transport(
        key="iceoryx2",
        label="iceoryx2 loans",
        make=_Iceoryx2ArrayLink,
        serialisation="loan_slice_uninit(n) of float64, stamped in place, send + notify; "
        "the receiver reads the sample in place (numpy view) and drops it",
        unavailable=_numpy_and("iceoryx2"),
        kind="arrays",
    ),
    Transport(
        key="shmipc",
        label="shmipc copied once",
        make=partial(_ShmipcArrayLink, loaned=False),
        serialisation="Queue(pool=BufferPool): put(array) copies it once into a pool block, "
        "get() gives a read-only array on the block",
        unavailable=_both(_numpy_and(), _shmipc_pool_unavailable()),
        kind="arrays",
    ),
    Transport(
        key="shmipc",
        label="shmipc loaned",
        make=partial(_ShmipcArrayLink, loaned=True),
        serialisation="q.loan_array(shape, dtype), stamped in place, put(loan) sends a "
        "handle; get() gives a read-only array on the block",
        unavailable=_both(_numpy_and(), _shmipc_pool_unavailable("loan_array")),
        kind="arrays",
    ),
)
