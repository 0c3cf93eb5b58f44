"""Exact comparison of decoded values: equal, and of the very same types all the way down."""

from __future__ import annotations

import struct
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is installed where these tests run
    np = None  # type: ignore[assignment]


def assert_same(got: Any, want: Any, path: str = "value") -> None:
    """Fail unless ``got`` equals ``want`` exactly: types, NaN bits, tzinfo, dtype and layout."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if np is not None and isinstance(want, np.ndarray):
        _same_array(got, want, path)
    elif np is not None and isinstance(want, np.generic):
        assert got.dtype == want.dtype and got.dtype.str == want.dtype.str, path
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), path
    elif isinstance(want, float):
        assert struct.pack(">d", got) == struct.pack(">d", want), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, complex):
        assert_same(got.real, want.real, f"{path}.real")
        assert_same(got.imag, want.imag, f"{path}.imag")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert len(got) == len(want), f"{path}: {len(got)} keys != {len(want)}"
        for i, ((gk, gv), (wk, wv)) in enumerate(zip(got.items(), want.items(), strict=True)):
            assert_same(gk, wk, f"{path}.key#{i}")
            assert_same(gv, wv, f"{path}[{wk!r}]")
    elif isinstance(want, (set, frozenset)):
        assert got == want, f"{path}: {got!r} != {want!r}"
        by_value = {item: item for item in got}
        for item in want:
            assert_same(by_value[item], item, f"{path}{{{item!r}}}")
    elif isinstance(want, (datetime, time)):
        assert repr(got) == repr(want), f"{path}: {got!r} != {want!r}"  # fold and tzinfo too
        _same_tz(got.tzinfo, want.tzinfo, path)
    elif isinstance(want, (date, timedelta)):
        assert got == want, f"{path}: {got!r} != {want!r}"
    elif isinstance(want, tzinfo):
        _same_tz(got, want, path)
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def _same_tz(got: tzinfo | None, want: tzinfo | None, path: str) -> None:
    assert type(got) is type(want), f"{path}.tzinfo: {type(got)} != {type(want)}"
    if want is not None:
        assert got == want and repr(got) == repr(want), f"{path}.tzinfo: {got!r} != {want!r}"
        assert got.tzname(None) == want.tzname(None), f"{path}.tzinfo name"


def _same_array(got: Any, want: Any, path: str) -> None:
    assert got.dtype == want.dtype, f"{path}: dtype {got.dtype} != {want.dtype}"
    assert got.dtype.str == want.dtype.str, f"{path}: dtype {got.dtype.str} != {want.dtype.str}"
    assert got.shape == want.shape, f"{path}: shape {got.shape} != {want.shape}"
    if want.flags.f_contiguous and not want.flags.c_contiguous:
        assert got.flags.f_contiguous, f"{path}: lost Fortran order"
    elif want.flags.c_contiguous:
        assert got.flags.c_contiguous, f"{path}: lost C order"
    assert got.flags.writeable, f"{path}: decoded array is read-only"
    assert got.tobytes(order="C") == want.tobytes(order="C"), f"{path}: items differ"
