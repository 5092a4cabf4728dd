"""Count kernel launches, host<->device transfers and synchronisations in one training step
on the CUDA backend, in simulation (tests/cuda_sim's fake CuPy; no GPU needed).

    python bench/step_counts.py --tag after            # reference CNN + ResNet, batch 128
    python bench/step_counts.py --models simple_cnn --batch 16 --optimizers sgd,adam

The step and what counts are defined in tests/cuda_sim/step_trace.py and fake_cupy.trace:
one launch per RawKernel call and per CuPy operation that launches (ufuncs, reductions,
copies, fills, cuRAND draws); h2d/d2h per copy; a sync per explicit synchronize and per
D2H copy.  Each model runs one untraced warm-up step, then two traced steps; the report gives
the second step and whether both traced steps had identical launch+allocation sequences
(graph-capture readiness), also without the optimizer's pointer-table upload, which happens
only in a step whose gradients sit at new addresses (step_trace.sequence_without_uploads).  On a real GPU use a profiler instead (see step_trace's docstring).
Results: bench/results/step_counts[_<tag>].{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "cuda_sim"))

import harness  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="simple_cnn,resnet")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--optimizers", default="sgd")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    return p.parse_args(argv)


def count(nnx, step_trace, model_name, batch, optimizer):
    model, crit, opt, x, y = step_trace.build(nnx, model_name, batch, optimizer)
    step = step_trace.make_step(nnx, model, crit, opt)
    first, second = step_trace.trace_steps(step, x, y, warmup=1, steps=2)
    row = {"model": model_name, "batch": batch, "optimizer": optimizer,
           "parameters": len(list(model.parameters())),
           **step_trace.summary(second),
           "identical_consecutive_steps": first.sequence() == second.sequence(),
           "identical_except_table_upload": (step_trace.sequence_without_uploads(first)
                                             == step_trace.sequence_without_uploads(second)),
           "h2d_first_traced_step": first.counts()["h2d"]}
    return row


def main(argv=None):
    args = parse_args(argv)
    import sim_backend
    import step_trace
    rows = []
    # the fake's default build folder: simulated kernels are cached there by content hash
    with sim_backend.simulated_backend() as be, sim_backend.registered_as_cuda(be):
        import nnx
        import nnx.models  # noqa: F401
        nnx.backend.use("cuda")
        for name in [m for m in args.models.split(",") if m]:
            for opt in [o for o in args.optimizers.split(",") if o]:
                row = count(nnx, step_trace, name, args.batch, opt)
                rows.append(row)
                print(f"{name} b{args.batch} {opt}: {row['launches']} launches, "
                      f"{row['h2d']} h2d, {row['d2h']} d2h, {row['syncs']} syncs, "
                      f"{row['allocations']} allocs, identical steps "
                      f"{row['identical_consecutive_steps']}", flush=True)
    command = " ".join(["python", *sys.argv])
    payload = {"benchmark": "step_counts", "simulated": True, "command": command,
               "step": "forward + CrossEntropyLoss + zero_grad + backward(input_grad=False) + "
                       "optimizer.step + trainer per-step metrics",
               "method": __doc__.split("\n\n", 2)[2].strip(), "rows": rows}
    md = ("# Launches, transfers and synchronisations per training step (simulated CUDA)\n\n"
          f"Command: `{command}`\n\n" + payload["method"] + "\n\n"
          + harness.markdown_table(
              ["model", "batch", "optimizer", "params", "launches", "allocs", "alloc MiB",
               "H2D (1st, 2nd step)", "D2H", "syncs", "cuRAND created", "steps identical",
               "identical less table upload"],
              [[r["model"], r["batch"], r["optimizer"], r["parameters"], r["launches"],
                r["allocations"], f"{r['alloc_bytes'] / 2**20:.1f}",
                f"{r['h2d_first_traced_step']}, {r['h2d']}", r["d2h"], r["syncs"],
                r["rng_created"], r["identical_consecutive_steps"],
                r["identical_except_table_upload"]]
               for r in rows]))
    for r in rows:
        md += (f"\n\nLaunches by name, {r['model']} ({r['optimizer']}): "
               + ", ".join(f"{k} {v}" for k, v in r["launch_names"].items()))
        if r["sync_names"]:
            md += "\nSyncs by cause: " + ", ".join(f"{k} {v}" for k, v in
                                                   r["sync_names"].items())
    md += "\n"
    name = "step_counts" + (f"_{args.tag}" if args.tag else "")
    paths = harness.write_results(name, payload, md, args.out)
    print("wrote", *paths)
    return payload


if __name__ == "__main__":
    main()
