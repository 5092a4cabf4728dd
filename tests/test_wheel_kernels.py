"""The wheel ships kernels/*.cu as nnx/kernels/*.cu (and kernels/cpu/*.[ch] as
nnx/kernels/cpu/), and kernel_loader / native find them there.

Builds offline (``--no-build-isolation``) from a copy of the project in a temp dir, so the
checkout gets no build/ or egg-info litter.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nnx.backend import kernel_loader

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted(p.name for p in (ROOT / "kernels").glob("*.cu"))
HEADERS = sorted(p.name for p in (ROOT / "kernels").glob("*.cuh"))
CPU_KERNELS = sorted(f"cpu/{p.name}" for p in (ROOT / "kernels" / "cpu").glob("*.[ch]"))
_COPY = ["nnx", "kernels", "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in _COPY:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif p.exists():
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels = list(out.glob("nnx-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_contains_every_kernel(wheel):
    assert KERNELS and HEADERS, "no kernels/*.cu or *.cuh in the checkout"
    assert any(k.endswith(".c") for k in CPU_KERNELS), "no kernels/cpu/*.c in the checkout"
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [k for k in KERNELS + HEADERS + CPU_KERNELS if f"nnx/kernels/{k}" not in names]
    assert not missing, f"kernel sources missing from {wheel.name}: {missing}"
    # shipped byte-for-byte
    with zipfile.ZipFile(wheel) as z:
        for k in KERNELS + HEADERS + CPU_KERNELS:
            assert z.read(f"nnx/kernels/{k}") == (ROOT / "kernels" / k).read_bytes()


@pytest.mark.slow
def test_loader_finds_installed_layout(wheel, tmp_path, monkeypatch):
    monkeypatch.delenv("NNX_KERNEL_DIR", raising=False)
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    pkg = site / "nnx"
    assert kernel_loader.find_kernel_dir(pkg) == pkg / "kernels"
    src = kernel_loader.kernel_source("im2col", pkg)
    assert "im2col" in kernel_loader.kernel_names(src)
    assert "#include" not in src and "NNX_GRID_STRIDE(i, n)" in src  # header inlined from pkg
    # and the installed package itself resolves its own kernels dir (run in a fresh process)
    code = ("from nnx.backend import kernel_loader as k; print(k.find_kernel_dir())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == pkg / "kernels"


@pytest.mark.slow
def test_installed_package_builds_its_c_kernels(wheel, tmp_path):
    """A fresh process importing the unpacked wheel compiles kernels/cpu from the installed
    copy (NNX_CPU_KERNELS=1: an error, not a silent fallback) and runs a convolution with it."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import numpy as np, nnx\n"
            "from nnx.backend import native\n"
            "print(native.source_dir())\n"
            "c = nnx.nn.Conv2d(2, 3, 3, padding=1)\n"
            "y = c(np.ones((1, 2, 5, 5), np.float32))\n"
            "print(c.ctx.saved[0], y.shape)\n")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "NNX_CPU_KERNELS": "1",
           "NNX_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    src_dir, ran = out.stdout.strip().splitlines()
    assert Path(src_dir) == site / "nnx" / "kernels" / "cpu"
    assert ran == "direct (1, 3, 5, 5)"
    assert list((tmp_path / "cache" / "cpu-kernels").glob("conv2d-*.so"))


def test_loader_finds_checkout_layout(monkeypatch):
    monkeypatch.delenv("NNX_KERNEL_DIR", raising=False)
    assert kernel_loader.find_kernel_dir() == ROOT / "kernels"
    for k in KERNELS:
        spec = kernel_loader.module_spec(k[:-3])
        names = kernel_loader.kernel_names(spec["code"])
        assert names and '#include "' not in spec["code"], k
        assert spec["name_expressions"] == [f"{n}<{t}>" for n in names
                                            for t in ("float", "double")], (k, spec)
        assert type(spec["options"]) is tuple  # RawModule's Cython signature: tuple options


def test_loader_env_override_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("NNX_KERNEL_DIR", str(tmp_path))
    (tmp_path / "relu.cu").write_text('#include "h.cuh"\ntemplate <typename T>\n'
                                      '__global__ void relu(int n) {}\n')
    (tmp_path / "h.cuh").write_text("#define NNX_H 1\n")
    assert kernel_loader.find_kernel_dir() == tmp_path
    assert kernel_loader.module_spec("relu")["code"].startswith("#define NNX_H 1\n")
    (tmp_path / "h.cuh").unlink()
    with pytest.raises(FileNotFoundError, match="h.cuh"):
        kernel_loader.kernel_source("relu")
    with pytest.raises(FileNotFoundError, match="im2col.cu"):
        kernel_loader.kernel_source("im2col")
    empty = tmp_path / "empty" / "nnx"
    empty.mkdir(parents=True)
    monkeypatch.delenv("NNX_KERNEL_DIR")
    with pytest.raises(FileNotFoundError, match="NNX_KERNEL_DIR"):
        kernel_loader.find_kernel_dir(empty)
