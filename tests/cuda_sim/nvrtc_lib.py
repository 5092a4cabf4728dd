"""NVRTC, the compiler CuPy's RawModule uses at run time, callable without a GPU.

Two ways in, one interface (``compile(code, name, options, name_expressions)`` ->
``(ptx, {name expression: lowered name})``, :class:`NvrtcCompileError` with the log):

* :class:`CupyNvrtc` -- CuPy's own binding ``cupy_backends.cuda.libs.nvrtc`` (the exact calls
  RawModule makes), for the CUDA major CuPy was built for;
* :class:`CtypesNvrtc` -- ``libnvrtc.so.<major>`` from the ``nvidia-cuda-nvrtc`` (CUDA 13) or
  ``nvidia-cuda-nvrtc-cu12`` (CUDA 12) wheel through ctypes, so both majors are checked
  side by side although only one CuPy can be installed.

NVRTC needs no driver and no device: nothing here touches a GPU.
"""
from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected the source; the message is the program log."""


class CupyNvrtc:
    def __init__(self):
        from cupy_backends.cuda.libs import nvrtc
        self._nvrtc = nvrtc
        self.version = tuple(nvrtc.getVersion())
        self.label = f"cupy-binding-cuda{self.version[0]}"

    def compile(self, code, name, options, name_expressions=()):
        nv = self._nvrtc
        prog = nv.createProgram(code, name, [], [])
        try:
            for expr in name_expressions:
                nv.addNameExpression(prog, expr)
            try:
                nv.compileProgram(prog, list(options))
            except nv.NVRTCError:
                raise NvrtcCompileError(nv.getProgramLog(prog)) from None
            ptx = nv.getPTX(prog)
            ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
            lowered = {e: nv.getLoweredName(prog, e) for e in name_expressions}
            return ptx.rstrip("\0"), lowered
        finally:
            nv.destroyProgram(prog)


class CtypesNvrtc:
    def __init__(self, path):
        self.path = Path(path)
        lib = self._lib = ctypes.CDLL(str(path))
        c_prog = ctypes.c_void_p
        lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(c_prog), ctypes.c_char_p,
                                           ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                           ctypes.c_void_p]
        lib.nvrtcCompileProgram.argtypes = [c_prog, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcAddNameExpression.argtypes = [c_prog, ctypes.c_char_p]
        lib.nvrtcGetLoweredName.argtypes = [c_prog, ctypes.c_char_p,
                                            ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcGetProgramLogSize.argtypes = [c_prog, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetProgramLog.argtypes = [c_prog, ctypes.c_char_p]
        lib.nvrtcGetPTXSize.argtypes = [c_prog, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetPTX.argtypes = [c_prog, ctypes.c_char_p]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(c_prog)]
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)
        self.label = f"libnvrtc-cuda{major.value}"

    def _check(self, status, what):
        if status != 0:
            self._lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise RuntimeError(f"{what}: {self._lib.nvrtcGetErrorString(status).decode()}")

    def _text(self, prog, size_fn, get_fn):
        size = ctypes.c_size_t()
        self._check(size_fn(prog, ctypes.byref(size)), size_fn.__name__)
        buf = ctypes.create_string_buffer(size.value)
        self._check(get_fn(prog, buf), get_fn.__name__)
        return buf.value.decode(errors="replace")

    def compile(self, code, name, options, name_expressions=()):
        lib = self._lib
        prog = ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0,
                                           None, None), "nvrtcCreateProgram")
        try:
            for expr in name_expressions:
                self._check(lib.nvrtcAddNameExpression(prog, expr.encode()),
                            "nvrtcAddNameExpression")
            opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            if lib.nvrtcCompileProgram(prog, len(options), opts) != 0:
                raise NvrtcCompileError(self._text(prog, lib.nvrtcGetProgramLogSize,
                                                   lib.nvrtcGetProgramLog))
            ptx = self._text(prog, lib.nvrtcGetPTXSize, lib.nvrtcGetPTX)
            lowered = {}
            for expr in name_expressions:
                out = ctypes.c_char_p()
                self._check(lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)),
                            "nvrtcGetLoweredName")
                lowered[expr] = out.value.decode()
            return ptx, lowered
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


def wheel_libraries() -> dict[int, Path]:
    """``{CUDA major: libnvrtc.so.<major>}`` installed by the nvidia-cuda-nvrtc* wheels."""
    spec = importlib.util.find_spec("nvidia")
    found = {}
    for root in (spec.submodule_search_locations if spec else []):
        for lib in sorted(Path(root).glob("*/lib/libnvrtc.so.*")):
            suffix = lib.name[len("libnvrtc.so."):]
            if suffix.isdigit():
                found.setdefault(int(suffix), lib)
    return found
