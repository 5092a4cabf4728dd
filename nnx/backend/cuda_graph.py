"""Optional CUDA-graph replay of a step (``CapturedStep``), for the CUDA backend.

A step whose launches and allocation sizes repeat exactly (tests/test_step_counts_sim.py
checks the trainer's) can be recorded once with ``Stream.begin_capture``/``end_capture`` and
replayed with one ``Graph.launch``: the host then issues one call instead of every kernel.
Rules that capture imposes, and how this module meets them:

- inputs live at fixed addresses: the step runs on static copies of its inputs
  (``CapturedStep.inputs``); :meth:`CapturedStep.__call__` copies each new batch into them;
- no host synchronisation, no device->host copy and no upload from pageable host memory
  inside the step (CUDA refuses them on a capturing stream);
- allocations inside the step are stream-ordered: CuPy's ``MemoryAsyncPool`` is the
  allocator while capturing (and stays it for replay: the graph owns that memory);
- everything that happens once (kernel compilation, optimizer state, the optimizers'
  pointer tables) happens in the eager warm-up steps before capture.

The nnx layers do not all meet the second rule yet (``CrossEntropyLoss`` validates labels
with a host read); such a step fails to capture with CUDA's error naming the cause, and
:class:`CapturedStep` raises it as ``RuntimeError``.  A second limit for a whole step: the
multi-tensor optimizer uploads a new pointer table when a gradient sits at a new address,
and gradients allocated inside the capture (``Parameter.accumulate`` allocates on first
use) get graph-owned addresses, so that upload would also be refused; persistent gradient
buffers would remove it.  A step over persistent arrays (the optimizer step with
gradients kept between steps) captures today.  Opt-in only: nothing in nnx uses it
by default.
"""
from __future__ import annotations


class CapturedStep:
    """``step = CapturedStep(backend, fn, *example_inputs)``; ``step(*inputs)`` replays.

    ``fn(*inputs)`` runs ``warmup`` times eagerly on static copies of ``example_inputs``,
    then once under capture; later calls copy their inputs into the static copies and
    launch the graph (nothing is returned: read results from arrays ``fn`` writes)."""

    def __init__(self, backend, fn, *example_inputs, warmup: int = 2):
        if backend.name != "cuda":
            raise ValueError(f"CUDA graph capture needs the 'cuda' backend, got "
                             f"{backend.name!r}")
        xp = backend.xp
        self.backend, self.fn = backend, fn
        with backend.device:
            self.inputs = tuple(xp.array(a, copy=True) for a in example_inputs)
            xp.cuda.set_allocator(xp.cuda.MemoryAsyncPool().malloc)
            self.stream = xp.cuda.Stream(non_blocking=True)
            with self.stream:
                for _ in range(warmup):
                    fn(*self.inputs)
                self.stream.synchronize()
                self.stream.begin_capture()
                try:
                    fn(*self.inputs)
                except BaseException:
                    try:   # leave capture mode; fn's error is the one worth reporting
                        self.stream.end_capture()
                    except Exception:  # noqa: BLE001  (the invalidated capture's own error)
                        pass
                    raise
                self.graph = self.stream.end_capture()

    def __call__(self, *inputs):
        if len(inputs) != len(self.inputs):
            raise ValueError(f"captured step takes {len(self.inputs)} inputs, got "
                             f"{len(inputs)}")
        with self.backend.device, self.stream:
            for static, new in zip(self.inputs, inputs):
                if new.shape != static.shape or new.dtype != static.dtype:
                    raise ValueError(f"captured step input must be {static.dtype} of shape "
                                     f"{tuple(static.shape)}, got {new.dtype} of shape "
                                     f"{tuple(new.shape)}")
                static[...] = new
            self.graph.launch(self.stream)
