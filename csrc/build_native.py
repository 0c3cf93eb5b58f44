"""cffi builder for shmipc's native core (out-of-line API mode).

setup.py names it through ``cffi_modules``; it lives outside the package so that the
installed package never carries build code. ``shmipc.h`` is both the cdef and the C header.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = sorted(p for p in HERE.glob("*.c"))

ffibuilder = FFI()
ffibuilder.cdef((HERE / "shmipc.h").read_text())
ffibuilder.set_source(
    "shmipc._native_ext",
    '#include <stdint.h>\n#include <stddef.h>\n#include "shmipc.h"\n',
    sources=[str(p.relative_to(HERE.parent)) for p in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
    # csrc/fastpath.c uses the full C API (METH_FASTCALL, bytes internals): not abi3.
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
