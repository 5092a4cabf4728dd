"""Build hook: ship the CUDA kernel sources inside the package.

The kernels live at ``<repo>/kernels/*.cu`` (outside the ``nnx`` package, so they are easy to
compile and test on their own).  ``build_py`` copies them to ``nnx/kernels/*.cu`` in the build
tree, so wheels (and ``pip install .``) contain them where ``nnx.backend.kernel_loader``
looks first.  All other metadata is in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class build_py_with_kernels(build_py):
    def run(self):
        super().run()
        sources = sorted((HERE / "kernels").glob("*.cu"))
        if not sources:
            raise RuntimeError(f"no CUDA kernel sources found in {HERE / 'kernels'}")
        dest = Path(self.build_lib) / "nnx" / "kernels"
        dest.mkdir(parents=True, exist_ok=True)
        for src in sources:
            shutil.copyfile(src, dest / src.name)

    def get_outputs(self, include_bytecode=True):
        dest = Path(self.build_lib) / "nnx" / "kernels"
        extra = [str(dest / p.name) for p in sorted((HERE / "kernels").glob("*.cu"))]
        return list(super().get_outputs(include_bytecode)) + extra


setup(cmdclass={"build_py": build_py_with_kernels})
