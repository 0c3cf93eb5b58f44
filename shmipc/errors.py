"""The exception taxonomy of shmipc: whose fault it is, and what to do about it.

Every error shmipc raises on purpose derives from :class:`ShmipcError`, except where the
standard library already has the right name (``queue.Empty``/``queue.Full`` for queues,
``TimeoutError`` for other waits, ``PermissionError``/``FileExistsError``/``OSError`` for the
operating system's refusals).
"""

from __future__ import annotations

__all__ = [
    "Closed",
    "CorruptedError",
    "Evicted",
    "Lagged",
    "LayoutMismatch",
    "MessageTooLarge",
    "PeerDied",
    "Revoked",
    "ShmipcError",
]


class ShmipcError(Exception):
    """Base class of every error shmipc raises on purpose."""


class MessageTooLarge(ShmipcError, ValueError):
    """A message does not fit the channel and cannot be spilled: send it another way."""


class CorruptedError(ShmipcError):
    """Shared memory or a frame holds bytes that break the layout's rules.

    Raised instead of reading outside a mapping, looping forever or crashing: a corrupt or
    hostile peer can make a call fail with this, never take the interpreter down.
    """


class LayoutMismatch(ShmipcError):
    """A segment was made by another layout version or is another kind of object."""


class Closed(ShmipcError, ValueError):
    """The object was closed by this process; it cannot be used any more.

    A ``ValueError`` as well, as the standard library's closed objects raise
    (``multiprocessing.Queue``: ``ValueError("Queue ... is closed")``; files: ``ValueError("I/O
    operation on closed file")``), so code written for those catches it unchanged.
    """


class PeerDied(ShmipcError):
    """A process this call depended on died (for example, a segment's creator during init)."""


class Lagged(ShmipcError):
    """A subscriber was lapped by the publisher and lost ``missed`` messages."""

    def __init__(self, missed: int, message: str | None = None) -> None:
        self.missed = missed
        super().__init__(message or f"subscriber lagged behind and missed {missed} messages")


class Revoked(ShmipcError):
    """This thread's reservation was taken back while it was stopped (SIGSTOP) for longer
    than the ring's liveness interval, so that other producers could go on. Nothing of it
    was published; reserve again to send the message."""


class Evicted(ShmipcError):
    """A Topic subscriber's slot was taken back: its process was seen stopped (SIGSTOP) for
    the topic's liveness interval while a publisher waited for it (policy "block"). Nothing
    it had not received yet can be trusted any more; close it and subscribe again."""
