"""Segment names: the one validator every entry point that takes a name goes through.

A name reaches ``shm_open`` (through posix_ipc) and becomes a file in /dev/shm, so a bad one
can do harm before any other check runs: a NUL crashes posix_ipc (SIGSEGV), a ``/`` or ``..``
would point elsewhere, a control character reaches terminals through ``shmipc ls``. So names
are held to a strict rule, checked before anything touches the system:

* ASCII letters, digits, ``_``, ``-`` and ``.`` only (no NUL, ``/``, space, control or
  non-ASCII characters);
* not starting with ``.`` (so never ``.``, ``..`` or a hidden file);
* 1 to :data:`MAX_NAME_BYTES` bytes. The file name limit of /dev/shm (NAME_MAX) is 255 bytes;
  the rest is room for names shmipc derives from a segment's name.

One leading ``/`` (the POSIX spelling) is accepted and dropped.
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME_BYTES", "check_name"]

#: The longest segment name, in bytes (NAME_MAX 255 less room for derived names).
MAX_NAME_BYTES = 200

_ALLOWED = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_.\-]")


def check_name(name: object) -> str:
    """Return ``name`` without its optional leading ``/``; a ``ValueError`` (``TypeError``
    for a non-str) naming the rule it breaks otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a segment name must be a str, not {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if _ALLOWED.fullmatch(bare):
        if len(bare) > MAX_NAME_BYTES:  # ASCII only by now: characters are bytes
            raise ValueError(
                f"invalid segment name {_shown(name)}: {len(bare)} bytes, more than the "
                f"limit of {MAX_NAME_BYTES}"
            )
        return bare
    if not bare:
        raise ValueError(f"invalid segment name {_shown(name)}: it is empty")
    if len(bare.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(
            f"invalid segment name {_shown(name)}: more than the limit of {MAX_NAME_BYTES} bytes"
        )
    bad = _BAD_CHAR.search(bare)
    if bad is not None:
        raise ValueError(
            f"invalid segment name {_shown(name)}: character {bad.group()!r} is not allowed "
            "(use ASCII letters, digits, '_', '-' and '.'; one leading '/' is dropped)"
        )
    raise ValueError(
        f"invalid segment name {_shown(name)}: it must not start with '.' (no '.', '..' or "
        "hidden names)"
    )


def _shown(name: str) -> str:
    """The name for an error message: escaped, and cut short if it is long."""
    return repr(name) if len(name) <= 64 else repr(name[:64]) + "..."
