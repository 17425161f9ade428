# The C core is built by cffi (native/build_native.py); everything else is
# in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
