"""A/B of the CPU backend's code paths on one training step, interleaved in one process.

    python bench/cpu_paths.py                       # simple_cnn, batch 128, all cores
    python bench/cpu_paths.py --threads 1 --tag t1

Variants (same model weights, same batches, the step of ``train_step.py``):

* ``numpy``: ``NNX_CPU_KERNELS=0`` (im2col + GEMM convolution, NumPy max pool) and the
  modules in their literal order;
* ``c``: the C kernels (direct convolution, one-pass max pool) where they build (the
  machine line says so), literal order;
* ``c+reorder``: the C kernels and ``Sequential``'s ReLU-after-MaxPool2d order (the default).

The environment variable is read at every call, so the variants alternate round by round
(A B C, C B A, ...) and drift cancels in the per-round ratios.
Results: ``bench/results/cpu_paths[_<tag>].{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import harness  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(p, default_repeats=40)
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    if args.quick:
        args.batch = min(args.batch, 16)
    threads = harness.set_threads(args.threads)
    import numpy as np
    thread_info = harness.pin_threads(threads)
    import nnx
    import nnx.models  # noqa: F401
    be = nnx.backend.use("cpu")
    info = harness.machine(be)
    info["threads"] = thread_info

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32) for _ in range(3)]
    ys = [rng.integers(0, 10, size=args.batch) for _ in range(3)]

    def variant(kernels, reorder):
        nnx.manual_seed(0)
        model = nnx.models.get(args.model)
        if not reorder:   # run the children in their literal order
            model._execution_order = lambda: list(model._modules.values())
        crit = nnx.nn.CrossEntropyLoss()
        opt = nnx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        state = {"i": 0}

        def step():
            os.environ["NNX_CPU_KERNELS"] = kernels
            i = state["i"] = (state["i"] + 1) % len(xs)
            opt.zero_grad()
            loss = crit(model(xs[i]), ys[i])
            model.backward(crit.backward(), input_grad=False)
            opt.step()
            return loss
        return step

    fns = {"numpy": variant("0", False), "c": variant("auto", False),
           "c+reorder": variant("auto", True)}
    res = harness.time_interleaved(fns, {k: be.synchronize for k in fns}, warmup=args.warmup,
                                   repeats=args.repeats)
    os.environ.pop("NNX_CPU_KERNELS", None)
    rows, base = [], res["numpy"]["samples_ms"]
    for name, r in res.items():
        ratio = harness.paired_ratio(r["samples_ms"], base)
        rows.append([name, harness.fmt_time(r), harness.fmt_ratio(ratio)])
        print(f"{name:10s} {harness.fmt_time(r)} ms   vs numpy {harness.fmt_ratio(ratio)}")
    command = "python bench/cpu_paths.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = (f"# CPU code paths, one training step ({args.model}, batch {args.batch})\n\n"
          + harness.machine_markdown(info, command.strip()) + "\n\n"
          + "Median [IQR] ms per step over interleaved rounds; ratio = variant/numpy per round."
          + "\n\n" + harness.markdown_table(["variant", "ms", "ratio vs numpy"], rows) + "\n")
    name = "cpu_paths" + (f"_{args.tag}" if args.tag else "")
    paths = harness.write_results(name, {"machine": info, "command": command.strip(),
                                         "model": args.model, "batch": args.batch,
                                         "results": res}, md, args.out)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
