"""``python -m shmipc.bench``: run the benchmark and exit with its status.

``--limits`` / ``--io`` run the reference page's measurements instead (measure_cli).
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    if {"--limits", "--io"} & set(sys.argv[1:]):
        from .measure_cli import main as measure_main

        sys.exit(measure_main(sys.argv[1:]))
    sys.exit(main())
