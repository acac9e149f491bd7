"""Shared fixtures for the tests that drive the anvil command."""
import os
import pathlib
import subprocess

import pytest

SOURCE = pathlib.Path(os.environ.get("ANVIL_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
SHARED = pathlib.Path(os.environ.get("ANVIL_SHARED_DIR", SOURCE.parent / "shared"))
ANVIL = os.environ.get("ANVIL_BIN", str(SOURCE / "build" / "anvil"))


@pytest.fixture(scope="session")
def shared():
    return SHARED


@pytest.fixture(scope="session")
def anvil():
    """Runs the anvil command; returns the CompletedProcess (text mode)."""

    def run(*args, input=None, timeout=300):
        return subprocess.run([ANVIL, *map(str, args)], input=input, capture_output=True, text=True,
                              timeout=timeout)

    return run
