"""Build script: only the cffi extension (csrc/build_native.py); the metadata is in
pyproject.toml ([project], PEP 621)."""

from setuptools import setup

setup(cffi_modules=["csrc/build_native.py:ffibuilder"])
