"""Time one training step (forward, loss, backward, optimizer step) of nnx's models, side by
side with the identical PyTorch model and step.

    python bench/train_step.py                      # cpu, all cores, both models, N=32/128/512
    python bench/train_step.py --threads 1 --models simple_cnn --batch-sizes 128
    python bench/train_step.py --backend cuda       # GPU, PyTorch CUDA as the peer
    python bench/train_step.py --quick              # a smoke run (seconds)

The step is ``zero_grad; loss = CE(model(x), y); backward; SGD(lr=0.01, momentum=0.9)``.
nnx calls ``model.backward(dy, input_grad=False)``: like PyTorch, it does not compute the
gradient of the input images.  nnx and PyTorch alternate in rounds (A B, B A, ...) so that
machine drift cancels in the ratio; each step sees the next of a few fresh random batches.  In
a round each framework runs ``--block`` steps in a row (default 4): the first, right after the
other framework's, is the *hand-over* step, reported apart, and the round's time is the median
of the rest.  ``--block 1`` is strict alternation, where every step also pays for the other
framework's threads still spinning on the cores (bench/NOTES.md).
Results: ``bench/results/train_step_<backend>[_<tag>].{json,md}``; see bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # time the checkout this script lives in
sys.path.insert(0, HERE)

import harness  # noqa: E402  (no NumPy import at module level)

MODEL_KW = {"simple_cnn": {}, "resnet": {"width": 16, "blocks_per_stage": 1}}
N_BATCHES = 3  # distinct random batches cycled through by the timed steps


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(p, default_repeats=20)
    p.add_argument("--models", default="simple_cnn,resnet",
                   help="comma-separated: simple_cnn (the seeds' reference CNN), resnet")
    p.add_argument("--batch-sizes", default="32,128,512")
    p.add_argument("--budget-s", type=float, default=12.0,
                   help="time cap per (model, batch) measurement; at least 5 rounds run")
    p.add_argument("--block", type=int, default=4,
                   help="steps each framework runs in a row per round; the first (right after "
                        "the other framework) is reported apart as the hand-over step and the "
                        "round's time is the median of the others (1: strict alternation, "
                        "every step follows the other framework's)")
    p.add_argument("--profile", action="store_true",
                   help="also print nnx per-layer forward/backward times (sequential models)")
    p.add_argument("--rss", dest="rss", action="store_true", default=None,
                   help="peak RSS of each framework's step, each measured alone in a fresh "
                        "process (default: on; off with --quick)")
    p.add_argument("--no-rss", dest="rss", action="store_false")
    p.add_argument("--rss-child", choices=["nnx", "torch"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rss is None:
        a.rss = not a.quick
    if a.quick:
        a.batch_sizes = "32" if a.batch_sizes == "32,128,512" else a.batch_sizes
        a.warmup = min(a.warmup, 1)
        a.budget_s = min(a.budget_s, 2.0)
        a.block = min(a.block, 2)
    return a


def main(argv=None):
    args = parse_args(argv)
    if args.rss_child:
        return rss_child(args)
    threads = harness.set_threads(args.threads)          # before NumPy is imported
    import numpy as np
    thread_info = harness.pin_threads(threads)
    import nnx
    import nnx.models  # noqa: F401  (not imported by nnx itself)
    be = nnx.backend.use(args.backend)
    torch, skipped = harness.import_torch(not args.no_torch, threads, args.backend)
    device = "cuda" if args.backend == "cuda" else "cpu"
    info = harness.machine(be)
    info["threads"] = thread_info
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda":
            info["torch_gpu"] = torch.cuda.get_device_name()
    command = " ".join([os.path.basename(sys.executable), *sys.argv])
    if skipped:
        print(f"PyTorch comparison skipped: {skipped}")

    rows, runs = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for n in [int(b) for b in args.batch_sizes.split(",")]:
            run = bench_one(np, nnx, be, torch, device, name, n, args)
            runs.append(run)
            rows.append(_row(run))
            print(_line(run), flush=True)

    payload = {"benchmark": "train_step", "machine": info, "command": command,
               "torch_skipped": skipped,
               "step": "zero_grad + forward + CrossEntropyLoss + backward + SGD(0.01, m=0.9)",
               "runs": runs}
    md = ("# nnx training step vs PyTorch\n\n" + harness.machine_markdown(_flat(info), command)
          + ("" if not skipped else f"PyTorch comparison skipped: {skipped}\n\n")
          + "Times: median [IQR] ms per step over interleaved rounds; ratio = nnx/PyTorch "
            "per round, median [IQR] (below 1: nnx faster).  "
          + (f"Each round: {args.block} steps per framework in a row, the first (hand-over, "
             "right after the other framework) reported apart, the round's time = median of "
             "the rest.\n\n" if args.block > 1 else
             "Strict alternation (one step per framework per round).\n\n")
          + harness.markdown_table(
              ["model", "batch", "nnx ms", "nnx img/s", "PyTorch ms", "PyTorch img/s",
               "ratio nnx/PyTorch", "hand-over ms nnx / PyTorch", "nnx step RSS MiB",
               "PyTorch step RSS MiB",
               "process peak RSS MiB", "GPU pool MiB", "rounds"], rows)
          + "\nStep RSS: each framework alone in a fresh process (same model, batch and "
            "threads): peak resident set during its steps minus the resident set just "
            "before them (after imports, model and batches).  Process peak RSS: this "
            "process (both frameworks), cumulative over the runs above.\n")
    for run in runs:
        if run.get("profile"):
            md += (f"\nnnx per-layer median ms, {run['model']} batch {run['batch']} (the first "
                   "layer's backward computes parameter gradients only):\n\n"
                   + harness.markdown_table(
                       ["layer", "forward ms", "backward ms"],
                       [[r["layer"], f"{r['fwd_ms']:.2f}", f"{r['bwd_ms']:.2f}"]
                        for r in run["profile"]]))
    name = f"train_step_{args.backend}" + (f"_{args.tag}" if args.tag else "")
    paths = harness.write_results(name, payload, md, args.out)
    print("wrote", *paths)
    return payload


def _data(np, be, n, num_classes, image_size, in_channels, seed):
    """A few fresh random (non-zero) batches on the backend, plus host copies for PyTorch."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((n, in_channels, *image_size), dtype=np.float32)
          for _ in range(N_BATCHES)]
    ys = [rng.integers(0, num_classes, size=n) for _ in range(N_BATCHES)]
    return xs, ys


def build_step(np, nnx, be, name, n):
    """The timed nnx step on model ``name`` at batch ``n`` (also used by
    compare_checkouts.py): a namespace with ``step()`` (returns the loss), the model, the
    loss, and the batches on the backend (``xs``, ``ys``) and on the host."""
    from types import SimpleNamespace
    nnx.manual_seed(0)
    model = nnx.models.get(name, **MODEL_KW.get(name, {}))
    model.to(be)
    crit = nnx.nn.CrossEntropyLoss()
    opt = nnx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs_host, ys_host = _data(np, be, n, 10, (32, 32), 3, seed=n)
    xs = [be.asarray(x) for x in xs_host]
    ys = [be.asarray(y) for y in ys_host]
    state = {"i": 0}

    def step():
        i = state["i"] = (state["i"] + 1) % N_BATCHES
        opt.zero_grad()
        loss = crit(model(xs[i]), ys[i])
        model.backward(crit.backward(), input_grad=False)
        opt.step()
        return loss

    return SimpleNamespace(step=step, model=model, crit=crit, xs=xs, ys=ys, xs_host=xs_host,
                           ys_host=ys_host)


def bench_one(np, nnx, be, torch, device, name, n, args):
    bench = build_step(np, nnx, be, name, n)
    model, crit, xs, ys = bench.model, bench.crit, bench.xs, bench.ys
    xs_host, ys_host = bench.xs_host, bench.ys_host
    fns = {"nnx": bench.step}
    syncs = {"nnx": harness.make_sync(be)}
    run = {"model": name, "batch": n, "backend": be.name,
           "params": model.num_parameters()}
    if torch is not None:
        try:
            tmodel = torch_peer().torch_twin(model, torch, device)
        except NotImplementedError as e:
            tmodel, run["torch_skipped"] = None, str(e)
        if tmodel is not None:
            torch_step, tfirst = build_torch_step(torch, device, tmodel, xs_host, ys_host)
            # identical model and data: the first losses must agree (checks the twin)
            l_nnx = float(be.to_numpy(crit(model(xs[0]), ys[0])))
            run["first_loss"] = {"nnx": l_nnx, "torch": tfirst()}
            fns["torch"] = torch_step
            syncs["torch"] = harness.torch_sync(torch, device)
    res = harness.time_interleaved(fns, syncs, warmup=args.warmup, repeats=args.repeats,
                                   budget_s=args.budget_s, block=args.block)
    run["nnx"] = res["nnx"]
    run["nnx"]["images_per_s"] = n / (res["nnx"]["median_ms"] / 1e3)
    if "torch" in res:
        run["torch"] = res["torch"]
        run["torch"]["images_per_s"] = n / (res["torch"]["median_ms"] / 1e3)
        run["ratio"] = harness.paired_ratio(res["nnx"]["samples_ms"],
                                            res["torch"]["samples_ms"])
        if device == "cuda":
            run["torch"]["max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    run["peak_rss_mb"] = harness.peak_rss_mb()
    if args.rss:
        run["step_rss_mb"] = {fw: step_rss(args, name, n, fw)
                              for fw in (["nnx", "torch"] if "torch" in fns else ["nnx"])}
    run["gpu_memory"] = harness.gpu_pool_bytes(be)
    if args.profile:
        run["profile"] = profile_layers(be, model, crit, xs[0], ys[0])
        for row in run["profile"]:
            print(f"    {row['layer']:<28s} fwd {row['fwd_ms']:7.2f}  bwd {row['bwd_ms']:7.2f}")
    return run


def build_torch_step(torch, device, tmodel, xs_host, ys_host):
    """PyTorch's step on the twin ``tmodel`` and a function giving its first loss."""
    tcrit = torch.nn.CrossEntropyLoss()
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
    txs = [torch.from_numpy(x).to(device) for x in xs_host]
    tys = [torch.from_numpy(y).to(device) for y in ys_host]
    tstate = {"i": 0}

    def torch_step():
        i = tstate["i"] = (tstate["i"] + 1) % N_BATCHES
        topt.zero_grad(set_to_none=True)
        loss = tcrit(tmodel(txs[i]), tys[i])
        loss.backward()
        topt.step()
        return loss

    def first_loss():
        with torch.no_grad():
            return float(tcrit(tmodel(txs[0]), tys[0]))

    return torch_step, first_loss


RSS_STEPS = 5   # steps measured per framework (the first ones allocate everything)


def step_rss(args, name, n, framework):
    """Peak RSS of ``framework``'s step measured alone: a fresh process (this script with
    ``--rss-child``) builds the model and batches, then runs :data:`RSS_STEPS` steps;
    ``step_mb`` = peak RSS minus the RSS just before the steps."""
    import json
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", framework, "--models",
           name, "--batch-sizes", str(n), "--backend", args.backend]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_child(args):
    """``--rss-child nnx|torch``: one framework's steps alone; prints one JSON line."""
    import gc
    import json
    threads = harness.set_threads(args.threads)
    import numpy as np
    harness.pin_threads(threads)
    import nnx
    import nnx.models  # noqa: F401
    be = nnx.backend.use(args.backend)
    name, n = args.models, int(args.batch_sizes)
    bench = build_step(np, nnx, be, name, n)
    step = bench.step
    if args.rss_child == "torch":
        torch, skipped = harness.import_torch(True, threads, args.backend)
        if torch is None:
            raise SystemExit(f"PyTorch unavailable: {skipped}")
        device = "cuda" if args.backend == "cuda" else "cpu"
        tmodel = torch_peer().torch_twin(bench.model, torch, device)
        step, _ = build_torch_step(torch, device, tmodel, bench.xs_host, bench.ys_host)
        del bench                      # the nnx model and batches are not PyTorch's memory
        gc.collect()
    base = harness.current_rss_mb()
    for _ in range(RSS_STEPS):
        step()
    peak = harness.own_peak_rss_mb()      # ru_maxrss would include the parent's peak
    print(json.dumps({"baseline_mb": round(base, 1), "peak_mb": round(peak, 1),
                      "step_mb": round(peak - base, 1)}))
    return None


def profile_layers(be, model, crit, x, y, repeats=10):
    """Median forward/backward time of each top-level child of a Sequential model, run in
    the order ``Sequential.forward`` runs them (a ReLU after the MaxPool2d that follows it)."""
    import statistics
    import time
    names = {id(m): k for k, m in model.named_children()}
    order = model._execution_order() if hasattr(model, "_execution_order") else \
        [m for _, m in model.named_children()]
    mods = [(names[id(m)], m) for m in order]
    fw = {k: [] for k, _ in mods}
    bw = {k: [] for k, _ in mods}
    for _ in range(repeats + 2):
        h = x
        for k, m in mods:
            be.synchronize()
            t0 = time.perf_counter()
            h = m(h)
            be.synchronize()
            fw[k].append(time.perf_counter() - t0)
        crit(h, y)
        d = crit.backward()
        for idx in range(len(mods) - 1, -1, -1):
            k, m = mods[idx]
            be.synchronize()
            t0 = time.perf_counter()
            if idx == 0:
                m.backward_params(d)
            else:
                d = m.backward(d)
            be.synchronize()
            bw[k].append(time.perf_counter() - t0)
    return [{"layer": f"{k} ({type(m).__name__})",
             "fwd_ms": 1e3 * statistics.median(fw[k][2:]),
             "bwd_ms": 1e3 * statistics.median(bw[k][2:])} for k, m in mods]


def torch_peer():
    import torch_peer as tp
    return tp


def _row(run):
    t, r = run.get("torch"), run.get("ratio")
    gpu = run.get("gpu_memory") or {}
    pool = gpu.get("pool_total_bytes")
    return [run["model"], run["batch"], harness.fmt_time(run["nnx"]),
            f"{run['nnx']['images_per_s']:.0f}",
            harness.fmt_time(t) if t else "-", f"{t['images_per_s']:.0f}" if t else "-",
            harness.fmt_ratio(r), _handover(run), _rss(run, "nnx"), _rss(run, "torch"),
            f"{run['peak_rss_mb']:.0f}",
            f"{pool / 2**20:.0f}" if pool is not None else "-", run["nnx"]["repeats"]]


def _handover(run):
    h = [run.get(fw, {}).get("handover_ms") for fw in ("nnx", "torch")]
    return "-" if h[0] is None else " / ".join("-" if v is None else f"{v:.2f}" for v in h)


def _rss(run, framework):
    v = (run.get("step_rss_mb") or {}).get(framework)
    if not v:
        return "-"
    return "error" if "error" in v else f"{v['step_mb']:.0f}"


def _line(run):
    s = (f"{run['model']:>10s} N={run['batch']:<4d} nnx {harness.fmt_time(run['nnx'])} ms "
         f"({run['nnx']['images_per_s']:.0f} img/s)")
    if "torch" in run:
        s += (f" | torch {harness.fmt_time(run['torch'])} ms | ratio "
              f"{harness.fmt_ratio(run['ratio'])}")
    if run.get("step_rss_mb"):
        s += f" | step RSS MiB nnx {_rss(run, 'nnx')}, torch {_rss(run, 'torch')}"
    return s


def _flat(info):
    out = dict(info)
    th = out.pop("threads", None)
    if isinstance(th, dict):
        out["threads"] = th.get("requested")
        if th.get("threadpoolctl"):
            out["threadpoolctl"] = th["threadpoolctl"]
    return out


if __name__ == "__main__":
    main()
