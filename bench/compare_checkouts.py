"""Before/after: the same nnx training step timed in two checkouts, interleaved in one run.

    python bench/compare_checkouts.py --before /path/to/old/checkout --after .
    python bench/compare_checkouts.py --before ../old --after . --models resnet --threads 1

One worker process per checkout imports *that* checkout's nnx (each its own interpreter) and
waits for orders on stdin; the driver asks them in turn (A B, B A, ...) for a round of timed
steps, so that machine drift cancels in the per-round ratio after/before.  The step is the one
``bench/train_step.py`` times (zero_grad, forward, CrossEntropyLoss, backward without the input
gradient, SGD with momentum), on the same random batches in both.  Before timing, both workers
report their first loss: identical code paths must give identical numbers.
Results: ``bench/results/compare_checkouts[_<tag>].{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

WORKER = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
sys.path.insert(0, {bench!r})
import harness
harness.set_threads({threads})
import numpy as np
harness.pin_threads({threads})
import nnx, nnx.models
from train_step import build_step
steps = {{}}

def make(name, n):
    step = build_step(np, nnx, nnx.backend.get(), name, n).step
    return lambda: float(step())

for line in sys.stdin:
    cmd = json.loads(line)
    key = (cmd["model"], cmd["batch"])
    if key not in steps:
        steps[key] = make(*key)
        first = steps[key]()
        for _ in range(cmd.get("warmup", 3)):
            steps[key]()
        print(json.dumps({{"first_loss": first}}), flush=True)
        continue
    times = []
    for _ in range(cmd["steps"]):
        t0 = time.perf_counter()
        steps[key]()
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({{"ms": times}}), flush=True)
"""


class Worker:
    def __init__(self, checkout, threads):
        code = WORKER.format(bench=HERE, threads=threads)
        self.p = subprocess.Popen([sys.executable, "-c", code], cwd=checkout, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=dict(os.environ, PYTHONPATH=os.path.abspath(checkout)))

    def ask(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker in {self.p.args} died (exit {self.p.wait()})")
        return json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="checkout A (e.g. a git worktree of main)")
    p.add_argument("--after", default=os.path.dirname(HERE), help="checkout B (default: this)")
    p.add_argument("--models", default="simple_cnn,resnet")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=5, help="timed steps per worker per round")
    p.add_argument("--out", default=None)
    p.add_argument("--tag", default=None)
    a = p.parse_args(argv)
    threads = a.threads or os.cpu_count() or 1
    workers = {"before": Worker(a.before, threads), "after": Worker(a.after, threads)}
    rows, runs = [], []
    try:
        for name in a.models.split(","):
            for n in map(int, a.batch_sizes.split(",")):
                first = {k: w.ask(model=name, batch=n)["first_loss"] for k, w in workers.items()}
                samples = {"before": [], "after": []}
                ratios = []
                for r in range(a.rounds):
                    order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                    med = {}
                    for k in order:
                        ms = workers[k].ask(model=name, batch=n, steps=a.steps)["ms"]
                        samples[k] += [t / 1e3 for t in ms]     # summarize() takes s
                        med[k] = statistics.median(ms)
                    ratios.append(med["after"] / med["before"])
                run = {"model": name, "batch": n, "first_loss": first,
                       "same_first_loss": first["before"] == first["after"],
                       "before": harness.summarize(samples["before"]),
                       "after": harness.summarize(samples["after"]),
                       "ratio_after_before": _quartiles(ratios)}
                runs.append(run)
                q = run["ratio_after_before"]
                rows.append([name, n, f"{run['before']['median_ms']:.2f}",
                             f"{run['after']['median_ms']:.2f}",
                             f"{q['median']:.3f} [{q['q1']:.3f}-{q['q3']:.3f}]",
                             "yes" if run["same_first_loss"] else "NO"])
                print(*rows[-1], flush=True)
    finally:
        for w in workers.values():
            w.close()
    command = " ".join([os.path.basename(sys.executable), *sys.argv])
    import numpy as np
    info = {"cpu": harness.cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
            "numpy": np.__version__, "threads": threads}
    payload = {"benchmark": "compare_checkouts", "machine": info, "command": command,
               "before": os.path.abspath(a.before), "after": os.path.abspath(a.after),
               "runs": runs}
    md = ("# nnx training step: before vs after, interleaved\n\n"
          + harness.machine_markdown(_flat(info), command)
          + "Median ms per step; ratio = after/before per round, median [IQR] (below 1: "
            "faster after).\n\n"
          + harness.markdown_table(["model", "batch", "before ms", "after ms",
                                    "ratio after/before", "same first loss"], rows))
    name = "compare_checkouts" + (f"_{a.tag}" if a.tag else "")
    print("wrote", *harness.write_results(name, payload, md, a.out))
    return payload


def _quartiles(xs):
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [min(xs), statistics.median(xs),
                                                              max(xs)]
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "rounds": len(xs)}


def _flat(info):
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in info.items()}


if __name__ == "__main__":
    main()
