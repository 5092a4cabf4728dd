"""Build hook: ship the kernel sources inside the package.

The kernels live at ``<repo>/kernels/*.cu`` plus their shared header ``kernels/*.cuh`` (CUDA) and ``<repo>/kernels/cpu/*.[ch]`` (C, for
the CPU backend), outside the ``nnx`` package so they are easy to compile and test on their
own.  ``build_py`` copies them to ``nnx/kernels/`` in the build tree, so wheels (and
``pip install .``) contain them where ``nnx.backend.kernel_loader`` and
``nnx.backend.native`` look first.  Both are compiled at first use, not here: the wheel stays
pure Python.  All other metadata is in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def kernel_sources():
    """Paths relative to ``kernels/`` of every shipped source."""
    root = HERE / "kernels"
    found = (sorted(root.glob("*.cu")) + sorted(root.glob("*.cuh")) + sorted(root.glob("cpu/*.c"))
             + sorted(root.glob("cpu/*.h")))
    return [p.relative_to(root) for p in found]


class build_py_with_kernels(build_py):
    def run(self):
        super().run()
        sources = kernel_sources()
        if not all(any(p.suffix == ext for p in sources) for ext in (".cu", ".cuh", ".c")):
            raise RuntimeError(f"kernel sources (*.cu, *.cuh, cpu/*.c) missing in "
                               f"{HERE / 'kernels'}")
        dest = Path(self.build_lib) / "nnx" / "kernels"
        for rel in sources:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / "kernels" / rel, dest / rel)

    def get_outputs(self, include_bytecode=True):
        dest = Path(self.build_lib) / "nnx" / "kernels"
        extra = [str(dest / rel) for rel in kernel_sources()]
        return list(super().get_outputs(include_bytecode)) + extra


setup(cmdclass={"build_py": build_py_with_kernels})
