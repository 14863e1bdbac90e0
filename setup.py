"""Builds the cffi extension at install time; metadata lives in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["pipeline/native_build.py:ffibuilder"])
