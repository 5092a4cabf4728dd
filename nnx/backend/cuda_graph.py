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

A whole training step meets these rules (checked in simulation by
tests/test_step_counts_sim.py: it captures, and the graph holds exactly an eager step's
launches) when

- the loss reads nothing on the host: ``CrossEntropyLoss`` without ``weight`` (the fused
  device path; its out-of-range labels are read later by ``check_labels``);
- gradients stay at their addresses: ``optimizer.zero_grad(set_to_none=False)`` in the step,
  so the first gradients (adopted by ``Parameter.accumulate`` in the warm-up) are zeroed and
  accumulated in place.  With ``set_to_none=True`` each step's gradients are new arrays; the
  multi-tensor optimizer then uploads a pointer table whenever their addresses differ from
  one it has seen, and that upload is refused while capturing;
- what the caller wants to read (the loss) is copied by ``fn`` into an array allocated
  before capture (``out[...] = loss``): arrays allocated inside the capture are graph
  memory, and CUDA does not let a graph whose allocations are still alive be relaunched
  (not checked here: the fake does not model it).

Layers with their own host reads (e.g. ``CrossEntropyLoss(weight=...)``, ``BCELoss``'s range
check) fail to capture with CUDA's error naming the cause, raised as ``RuntimeError``.  Replay
itself is not simulated (the fake records, it does not execute a graph): it is measured only
when a GPU is lent (``bench/gpu_check.py``).  Opt-in only: nothing in nnx uses it by default.
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
