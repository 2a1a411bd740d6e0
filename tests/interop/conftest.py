"""Opt-in interoperability tests (``make interop``): real llama.cpp through llama-cpp-python built from PyPI's
sdist. They run only with LORAFAM_INTEROP=1 (building llama-cpp-python takes minutes of CPU)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("LORAFAM_INTEROP") == "1":
        return
    skip = pytest.mark.skip(reason="interop tests are opt-in: make interop (sets LORAFAM_INTEROP=1)")
    for item in items:
        if "tests/interop" in str(item.fspath):
            item.add_marker(skip)
