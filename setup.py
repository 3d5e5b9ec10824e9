"""Shim for tools that still call setup.py; the metadata lives in pyproject.toml's [project]."""
from setuptools import setup

setup()
