"""Every kernels/*.cu compiles with nvcc to PTX and to cubin for sm_80 and sm_90.

The kernels are templates; a small wrapper per file takes the address of every instantiation
the loader asks CuPy for (``kernel_loader.module_spec(stem)["name_expressions"]``), which makes
nvcc emit exactly those, under their Itanium-mangled names (``relu<float>`` ->
``_Z4reluIfEv...``).  The shared header is found next to the .cu file, as for RawModule.

``--resource-usage`` reports per kernel are parsed, written to ``<tmp>/nvcc_resource_usage.txt``
and printed (``pytest -s`` or the captured-output section).  No kernel may spill (they are all
element-wise or tiny row reductions) and none may produce a compiler warning.  Compiles run on a
2-thread pool; skipped without nvcc.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nnx.backend import kernel_loader

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "kernels").glob("*.cu"))
NVCC = os.environ.get("NVCC") or (
    "/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else shutil.which("nvcc"))
ARCHES = ["sm_80", "sm_90"]
_MANGLED_TYPE = {"float": "f", "double": "d"}   # Itanium codes of the element types


def mangled_prefix(expr: str) -> str:
    """``relu<float>`` -> ``_Z4reluIfE`` (how the instantiation's symbol name starts)."""
    name, t = expr[:-1].split("<")
    return f"_Z{len(name)}{name}I{_MANGLED_TYPE[t]}E"


def _wrapper(cu: Path, out: Path) -> tuple[Path, list[str]]:
    """A .cu that includes ``cu`` and instantiates every kernel the loader compiles."""
    exprs = kernel_loader.module_spec(cu.stem)["name_expressions"]
    refs = ", ".join(f"(void*)&{e}" for e in exprs)
    path = out / f"inst_{cu.name}"
    path.write_text(f'#include "{cu}"\nvoid* nnx_instances[] = {{{refs}}};\n')
    return path, exprs

pytestmark = pytest.mark.skipif(not NVCC, reason="nvcc not found (/usr/local/bin/nvcc or PATH)")

_PROPS = re.compile(r"Function properties for (\w+)\s*\n\s*(?:ptxas info\s*:\s*)?(\d+) bytes stack "
                    r"frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'.*?Used (\d+) registers"
                   r"(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?", re.S)


def _nvcc(args, cwd):
    proc = subprocess.run([NVCC, "-std=c++14", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``{(file, target): (returncode, output)}`` for target in ptx, sm_80, sm_90."""
    out = tmp_path_factory.mktemp("nvcc")
    jobs = []
    for cu in CU_FILES:
        src, _ = _wrapper(cu, out)
        jobs.append((cu, "ptx", ["-ptx", "-arch=compute_80", "-o", str(out / f"{cu.stem}.ptx"),
                                 str(src)]))
        for arch in ARCHES:
            jobs.append((cu, arch, ["-cubin", f"-arch={arch}", "--resource-usage", "-o",
                                    str(out / f"{cu.stem}.{arch}.cubin"), str(src)]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda j: _nvcc(j[2], out), jobs))
    res = {(cu.name, target): r for (cu, target, _), r in zip(jobs, results)}
    return out, res


def _usage(text):
    """``{kernel: dict(stack, spill_st, spill_ld, regs, barriers, smem)}`` from ptxas output."""
    rows = {}
    for name, stack, st, ld in _PROPS.findall(text):
        rows[name] = dict(stack=int(stack), spill_st=int(st), spill_ld=int(ld))
    for chunk in re.split(r"(?=ptxas info\s*: Compiling entry function)", text):
        m = _USED.search(chunk)
        if m and m.group(1) in rows:
            rows[m.group(1)].update(regs=int(m.group(3)), barriers=int(m.group(4) or 0),
                                    smem=int(m.group(5) or 0))
    return rows


def test_ptx_compiles(compiled):
    out, res = compiled
    for cu in CU_FILES:
        rc, text = res[(cu.name, "ptx")]
        assert rc == 0, f"nvcc -ptx failed for {cu.name}:\n{text}"
        assert "warning" not in text.lower(), f"{cu.name}: {text}"
        ptx = (out / f"{cu.stem}.ptx").read_text()
        entries = re.findall(r"\.entry\s+(\w+)\(", ptx)
        exprs = kernel_loader.module_spec(cu.stem)["name_expressions"]
        assert len(entries) == len(exprs), (cu.name, entries, exprs)
        for e in exprs:
            assert any(x.startswith(mangled_prefix(e)) for x in entries), \
                f"{e} missing from {cu.stem}.ptx: {entries}"


def test_cubin_resource_usage(compiled):
    out, res = compiled
    lines = [f"{'kernel':42s} {'arch':6s} {'regs':>4s} {'stack':>5s} {'spillST':>7s} "
             f"{'spillLD':>7s} {'smem':>5s}"]
    problems = []
    for cu in CU_FILES:
        exprs = kernel_loader.module_spec(cu.stem)["name_expressions"]
        for arch in ARCHES:
            rc, text = res[(cu.name, arch)]
            assert rc == 0, f"nvcc -cubin -arch={arch} failed for {cu.name}:\n{text}"
            if "warning" in text.lower():
                problems.append(f"{cu.name} {arch}: compiler warning:\n{text}")
            usage = _usage(text)
            for name in exprs:
                u = next((v for k, v in usage.items() if k.startswith(mangled_prefix(name))),
                         None)
                if u is None or "regs" not in u:
                    problems.append(f"{name} ({arch}): no resource report")
                    continue
                lines.append(f"{name:42s} {arch:6s} {u['regs']:4d} {u['stack']:5d} "
                             f"{u['spill_st']:7d} {u['spill_ld']:7d} {u['smem']:5d}")
                if u["spill_st"] or u["spill_ld"]:
                    problems.append(f"{name} ({arch}) spills: {u}")
    report = "\n".join(lines) + "\n"
    (out / "nvcc_resource_usage.txt").write_text(report)
    print(f"\nnvcc resource usage ({out / 'nvcc_resource_usage.txt'}):\n{report}")
    assert not problems, "\n".join(problems)
