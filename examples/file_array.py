"""A file used as an array: map it, store at an offset, flush, read it back with plain I/O.

The classic memory-mapped-file pattern with ``shmipc.Region.file``: the mapping's offset N is
the file's offset N, a store into ``region.buffer`` is a store into the page cache (no write()
call), and ``flush()`` (msync) pushes the dirty pages to the file before we read it back
through an ordinary ``open()``. Runs on a temporary file, which it removes.

    python examples/file_array.py [DIRECTORY]
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile

from shmipc import Region

SIZE = 8192  # two pages
OFFSET = 1024  # where the answer goes
VALUE = 42


def main(directory: str | None = None) -> int:
    with tempfile.TemporaryDirectory(dir=directory, prefix="shmipc-file-array-") as tmp:
        path = os.path.join(tmp, "index.bin")
        with Region.file(path, SIZE) as region:  # creates the file and grows it to SIZE
            print(f"mapped {path}: {region.size} bytes, file is {os.path.getsize(path)} bytes")
            header = bytes(region.buffer[:16])  # reading is slicing: no read() call
            print(f"first 16 bytes: {header.hex()}")

            region.buffer[OFFSET : OFFSET + 4] = VALUE.to_bytes(4, "little")
            print(f"stored {VALUE} as 4 little-endian bytes at offset {OFFSET}")

            region.advise("sequential")  # a hint about the access pattern (madvise)
            region.flush()  # msync: the dirty page reaches the file now
            print("flushed")

            with open(path, "rb") as f:  # plain file I/O, not the mapping
                f.seek(OFFSET)
                (back,) = struct.unpack("<I", f.read(4))
            print(f"read back through open(): {back} at offset {OFFSET}")

        if back != VALUE:
            print(f"MISMATCH: expected {VALUE}, got {back}", file=sys.stderr)
            return 1
        print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
