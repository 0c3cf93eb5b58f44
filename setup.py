"""Build script: package metadata and the cffi extension (csrc/build_native.py)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "shmipc" / "_version.py").read_text(), re.M
).group(1)

setup(
    name="shmipc",
    version=VERSION,
    description="Cross-process shared-memory IPC for Python: queues, topics and sync at memory speed",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["shmipc", "shmipc.*"]),
    package_data={"shmipc": ["py.typed"]},
    setup_requires=["cffi>=1.15"],
    cffi_modules=["csrc/build_native.py:ffibuilder"],
    install_requires=["cffi>=1.15", "posix_ipc>=1.1", "msgpack>=1.0", "click>=8.1", "rich>=13"],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "numpy>=1.22",
            "uvloop>=0.17; sys_platform == 'linux' and platform_python_implementation == 'CPython'",
        ],
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
        "bench": ["faster-fifo>=1.4", "pyzmq>=25", "numpy>=1.22", "iceoryx2>=0.10"],
    },
    entry_points={"console_scripts": ["shmipc=shmipc.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Distributed Computing",
    ],
    zip_safe=False,
)
