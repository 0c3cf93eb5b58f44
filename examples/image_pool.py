"""A numpy "image" pipeline through shmipc.Pool, the pixels travelling in shared blocks.

The parent makes each frame directly in a block of the pool's block pool
(``pool.buffer_pool.loan_array``: no copy on the way out), and ``imap`` sends it to a worker,
which blurs it and converts it to grey. The frame's pixels are never pickled nor written to a
pipe: only a small handle to the block travels. The worker's result is copied once into a
block and arrives in the parent as an array on that block, writable in place. The parent
checks every result against the same filter computed locally (a CRC-32 of the pixels).

    python examples/image_pool.py [--count N] [--size PIXELS] [--workers W]

Prints the frames processed, the bytes that went through blocks and "checksums OK"; exits 1
on a mismatch.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib

import numpy as np

import shmipc


def process(frame: np.ndarray) -> np.ndarray:
    """A box blur (3x3) then a grey conversion: a stand-in for real image work."""
    f = frame.astype(np.uint16)
    blur = f.copy()
    blur[1:-1, 1:-1] = (
        f[:-2, :-2]
        + f[:-2, 1:-1]
        + f[:-2, 2:]
        + f[1:-1, :-2]
        + f[1:-1, 1:-1]
        + f[1:-1, 2:]
        + f[2:, :-2]
        + f[2:, 1:-1]
        + f[2:, 2:]
    ) // 9
    grey = (blur[..., 0] * 77 + blur[..., 1] * 150 + blur[..., 2] * 29) >> 8
    return grey.astype(np.uint8)


def fill(frame: np.ndarray, n: int) -> None:
    """Frame ``n``: a deterministic pattern (so the parent can recompute the expected result)."""
    h, w, _ = frame.shape
    y = np.arange(h, dtype=np.uint32)[:, None]
    x = np.arange(w, dtype=np.uint32)[None, :]
    for c in range(3):
        frame[..., c] = (x * (c + 1) + y * (n + 3) + n * 7) & 0xFF


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--size", type=int, default=512, help="frames are SIZE x SIZE x 3")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    shape = (args.size, args.size, 3)

    start = time.perf_counter()
    bad = 0
    with shmipc.Pool(args.workers, context="fork", buffer_pool_size=64 << 20) as pool:
        blocks = pool.buffer_pool

        def frames():  # type: ignore[no-untyped-def]
            for n in range(args.count):
                frame = blocks.loan_array(shape, np.uint8)  # made in place, in shared memory
                fill(frame, n)
                yield frame

        source = frames()
        for n, grey in enumerate(pool.imap(process, source)):
            expected = np.empty(shape, np.uint8)
            fill(expected, n)
            want = zlib.crc32(process(expected))
            got = zlib.crc32(grey)
            if got != want or grey.shape != shape[:2]:
                print(f"ERROR: frame {n}: crc {got:08x}, expected {want:08x}")
                bad += 1
        pool.close()
        pool.join()
    elapsed = time.perf_counter() - start
    moved = args.count * (np.prod(shape) + np.prod(shape[:2]))
    print(
        f"frames: {args.count} of {shape}, {moved / 1e6:.1f} MB through blocks in {elapsed:.2f} s"
    )
    if bad:
        return 1
    print(f"checksums OK: {args.count} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
