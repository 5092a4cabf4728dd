"""Data-parallel training step on 1 and 2 processes (``mpiexec -n P``) at a fixed batch per
process: throughput, the gradient all-reduce's time per step and the bytes all-reduced.

    python bench/distributed_step.py                   # P = 1, 2; both models; batch 32/process
    python bench/distributed_step.py --procs 1,2,4 --batch 64 --steps 20
    python bench/distributed_step.py --quick           # a smoke run (seconds)

Each process trains on CIFAR-sized random images (3x32x32): ``zero_grad; CE(model(x), y);
backward; sync_gradients; SGD(momentum 0.9)``, with BatchNorm converted to SyncBatchNorm and
the gradients averaged by :class:`nnx.distributed.DistributedDataParallel` (25 MB buckets).
Timed per step on rank 0, from a barrier: the whole step, the wait at a second barrier
before the gradient all-reduce (the ranks' imbalance), and ``sync_gradients`` alone.  ``bytes_allreduced_per_step`` counts every
all-reduce of the step: the gradient buckets and SyncBatchNorm's statistics.  Each process
gets ``NNX_NUM_THREADS = cores // P`` threads, so the runs share the same cores.  The load
average before and after is recorded: on a shared machine the numbers move with it.
Results: ``bench/results/distributed_step[_<tag>].{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # time the checkout this script lives in

MODEL_KW = {"simple_cnn": {}, "resnet": {"width": 16, "blocks_per_stage": 1}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="1,2", help="comma-separated process counts")
    p.add_argument("--models", default="simple_cnn,resnet")
    p.add_argument("--batch", type=int, default=32, help="images per process per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up)")
    p.add_argument("--quick", action="store_true", help="2 steps, batch 8 (smoke run)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--tag", default="")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)   # rank-0 result file
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch = 2, 8
    return args


# ------------------------------------------------------------------ one process of the job
def worker(args):
    import numpy as np

    import nnx
    from nnx import models
    from nnx.distributed import DistributedDataParallel, convert_sync_batchnorm, init
    comm = init()
    counted = {"bytes": 0}
    reduce = comm.allreduce_

    def counting_allreduce(a):
        counted["bytes"] += a.nbytes
        return reduce(a)
    comm.allreduce_ = counting_allreduce
    be = nnx.backend.get()
    rows = []
    for name in args.models.split(","):
        nnx.manual_seed(0)
        model = convert_sync_batchnorm(models.get(name, **MODEL_KW[name]), comm)
        ddp = DistributedDataParallel(model, comm)
        opt = nnx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        crit = nnx.nn.CrossEntropyLoss()
        rng = np.random.default_rng(comm.rank)
        x = be.asarray(rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32))
        y = be.asarray(rng.integers(0, 10, args.batch))
        step_s, sync_s, wait_s = [], [], []
        for i in range(args.steps + 2):
            comm.barrier()
            counted["bytes"] = 0
            t0 = time.perf_counter()
            crit(ddp(x), y)
            opt.zero_grad()
            ddp.module.backward(crit.backward(), input_grad=False)
            tw = time.perf_counter()
            comm.barrier()          # the wait for the slower rank, apart from the reduce
            t1 = time.perf_counter()
            ddp.sync_gradients()
            t2 = time.perf_counter()
            opt.step()
            be.synchronize()
            if i >= 2:
                step_s.append(time.perf_counter() - t0)
                sync_s.append(t2 - t1)
                wait_s.append(t1 - tw)
        step, sync = float(np.median(step_s)), float(np.median(sync_s))
        rows.append({"model": name, "procs": comm.size, "batch_per_proc": args.batch,
                     "params": model.num_parameters(), "step_ms": step * 1e3,
                     "allreduce_ms": sync * 1e3, "wait_ms": float(np.median(wait_s)) * 1e3,
                     "images_per_s": comm.size * args.batch / step,
                     "gradient_bytes_per_step": ddp.bytes_per_step,
                     "bytes_allreduced_per_step": counted["bytes"] if comm.size > 1 else 0,
                     "buckets": len(ddp.buckets)})
    if comm.rank == 0:
        with open(args.worker, "w") as f:
            json.dump(rows, f)


# ------------------------------------------------------------------ launcher
def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else "mpiexec"


def run_job(args, procs):
    cores = os.cpu_count() or 1
    env = {**os.environ, "NNX_NUM_THREADS": str(max(1, cores // procs)),
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "rows.json")
        cmd = [_mpiexec(), "-n", str(procs), sys.executable, os.path.abspath(__file__),
               "--worker", result, "--models", args.models, "--batch", str(args.batch),
               "--steps", str(args.steps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        with open(result) as f:
            return json.load(f)


def _write(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".distributed_step.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    load_before = os.getloadavg()
    rows = []
    for procs in [int(p) for p in args.procs.split(",")]:
        rows += run_job(args, procs)
        print(json.dumps(rows[-len(args.models.split(",")):]), flush=True)
    load_after = os.getloadavg()
    base = {r["model"]: r["images_per_s"] for r in rows if r["procs"] == 1}
    for r in rows:
        r["speedup_vs_1"] = r["images_per_s"] / base[r["model"]] if r["model"] in base else None
    payload = {"cores": os.cpu_count(), "load_before": load_before, "load_after": load_after,
               "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "batch_per_proc": args.batch, "steps": args.steps, "rows": rows}
    name = "distributed_step" + (f"_{args.tag}" if args.tag else "")
    os.makedirs(args.out, exist_ok=True)
    _write(os.path.join(args.out, name + ".json"), json.dumps(payload, indent=2) + "\n")
    md = [f"# {name}", "",
          f"{payload['started']}, {payload['cores']} cores, load average before "
          f"{load_before[0]:.1f} / after {load_after[0]:.1f} (1 min), batch {args.batch} per "
          f"process, median of {args.steps} steps, NNX_NUM_THREADS = cores // processes", "",
          "| model | processes | images/s | speed-up | step ms | wait ms | all-reduce ms | "
          "gradient bytes/step | all bytes/step | buckets |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['procs']} | {r['images_per_s']:.0f} | "
           f"{r['speedup_vs_1'] or float('nan'):.2f} | {r['step_ms']:.1f} | "
           f"{r['wait_ms']:.2f} | {r['allreduce_ms']:.2f} | {r['gradient_bytes_per_step']:,} | "
           f"{r['bytes_allreduced_per_step']:,} | {r['buckets']} |" for r in rows]
    _write(os.path.join(args.out, name + ".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
