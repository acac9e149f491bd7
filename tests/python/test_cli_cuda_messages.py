"""`anvil run --device cuda` where CUDA cannot run says what is missing, in
one line, with exit 1: the CUDA backend module (libanvil-cuda.so) when this
anvil has none next to it, else the NVIDIA driver (libcuda.so.1) when the
machine has none, else the GPU. On a machine with a driver and a GPU the
message tests skip (the GPU machine runs the CUDA tests instead)."""
import ctypes
import pathlib

import pytest

from conftest import ANVIL


def module_present():
    return (pathlib.Path(ANVIL).resolve().parent / "libanvil-cuda.so").exists() or \
        (pathlib.Path(ANVIL).resolve().parent.parent / "lib" / "libanvil-cuda.so").exists()


def driver_present():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def run_cuda(anvil, shared, device="cuda"):
    return anvil("run", "--model", shared / "models" / "stories260K", "--device", device, "--prompt", "hi")


def one_line(stderr):
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.skipif(module_present(), reason="this anvil has its CUDA backend module")
def test_no_cuda_module_names_the_library(anvil, shared):
    r = run_cuda(anvil, shared)
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert "libanvil-cuda.so" in line and "not installed" in line, line
    assert "looked" in line or "folder" in line, line  # where it looked
    assert r.stdout == ""


@pytest.mark.skipif(not module_present() or driver_present(),
                    reason="needs the CUDA backend module and a machine without an NVIDIA driver")
def test_no_driver_says_so(anvil, shared):
    r = run_cuda(anvil, shared)
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert "no NVIDIA driver found (libcuda.so.1" in line, line
    assert "insufficient" not in line  # not the CUDA runtime's version message
    # the same for a numbered device
    r = run_cuda(anvil, shared, "cuda:1")
    assert r.returncode == 1 and "no NVIDIA driver found" in r.stderr, r.stderr


@pytest.mark.skipif(not module_present() or not driver_present(), reason="needs a driver")
def test_device_past_the_last_gpu(anvil, shared):
    r = run_cuda(anvil, shared, "cuda:99")
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert "no CUDA GPU found" in line or "cuda:99" in line, line


def test_explicit_device_typo_is_refused(anvil, shared):
    r = run_cuda(anvil, shared, "cuda:x")
    assert r.returncode != 0
    assert "cuda:x" in r.stderr
