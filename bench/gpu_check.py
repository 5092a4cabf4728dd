"""One command that verifies and measures the CUDA backend on a lent GPU, stage by stage.

    PYTHONPATH=. python bench/gpu_check.py --out $OUT      # on the GPU machine (~8 minutes)
    python bench/gpu_check.py --simulate                   # here: the same script on the CPU,
                                                           # through tests/cuda_sim's fake CuPy

Stages (each a child process with its own time budget; a failure or timeout is recorded and
the next stage runs; results are rewritten after every stage, so a kill leaves them):
  env         GPU, driver, CUDA, CuPy, PyTorch versions; builds the backend and checks one
              kernel against NumPy.  If this fails the run stops here with a summary.
  tests       every gpu-marked test (CupyBackend vs NumPy, CPU-vs-GPU model comparisons),
              then the NVRTC and CuPy-conformance tests.
  copy        device-to-device copy bandwidth (the yardstick for the kernels' GB/s).
  ops         bench/ops.py --backend cuda; each fused kernel's GB/s as a share of the copy's.
  train_step  bench/train_step.py: reference CNN and ResNet, batches 32/128/512, vs PyTorch
              CUDA eager (both synchronize before reading clocks).
  digits      the digits CNN trained a few epochs on cuda and on cpu; test accuracies.
  graph       CUDA graph capture (nnx.backend.cuda_graph): the reference CNN's fused SGD step
              eager vs captured+replayed (ms per step), and a whole training step
              (zero_grad(set_to_none=False)) eager vs captured+replayed; a refused capture
              records CUDA's reason.  --simulate checks the captures only (no replay).
  nccl        nnx.distributed on one rank: NCCL all-reduce (cupy.cuda.nccl) of the ResNet's
              (simulated: the small CNN's) gradient bucket (ms, GB/s) and one data-parallel training step whose bucket
              goes through NCCL (gradients unchanged: a sum over one rank).  --simulate uses
              tests/cuda_sim/fake_nccl.py.  Needs CuPy's NCCL (e.g. nvidia-nccl-cu12).
Results: gpu_check[_sim].{json,md} in bench/results/ and in --out; the child benchmarks
write theirs next to them.  Nothing is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STAGES = ("env", "tests", "copy", "ops", "train_step", "digits", "graph", "nccl")
# seconds per stage on a GPU (sum ~7.5 min) and in --simulate (tiny sizes)
BUDGET = {"env": 45, "tests": 150, "copy": 20, "ops": 80, "train_step": 110, "digits": 60,
          "graph": 40, "nccl": 30}
BUDGET_SIM = {"env": 60, "tests": 120, "copy": 30, "ops": 120, "train_step": 120, "digits": 90,
              "graph": 90, "nccl": 90}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="also write every result here")
    p.add_argument("--simulate", action="store_true",
                   help="run on the CPU through the simulated CuPy (tiny sizes)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    p.add_argument("--total-s", type=float, default=470.0, help="deadline for the whole run")
    p.add_argument("--results-dir", default=os.path.join(HERE, "results"),
                   help="the repository's copy of the results (default bench/results)")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)       # child mode
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)      # child output file
    return p.parse_args(argv)


# ------------------------------------------------------------------ helpers
def _write_atomic(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".gpu_check.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _simulate_cupy():
    """Install tests/cuda_sim/fake_cupy as ``cupy`` (used by children in --simulate)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "cuda_sim"))
    import fake_cupy
    sys.modules["cupy"] = fake_cupy


# Python run by a child that executes a bench script with the fake CuPy installed.
_SIM_RUNNER = ("import runpy, sys; sys.path.insert(0, {sim!r}); import fake_cupy; "
               "sys.modules['cupy'] = fake_cupy; sys.argv = {argv!r}; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")


def _script_cmd(script, args, simulate):
    path = os.path.join(HERE, script)
    if simulate:
        code = _SIM_RUNNER.format(sim=os.path.join(ROOT, "tests", "cuda_sim"),
                                  argv=[path, *args])
        return [sys.executable, "-c", code]
    return [sys.executable, path, *args]


def _run(cmd, timeout, log_path):
    """Run ``cmd`` with a timeout; (status, seconds, tail of its output)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout)
            status = "pass" if proc.returncode == 0 else f"fail (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({timeout:.0f} s)"
    with open(log_path, errors="replace") as f:
        tail = f.read()[-3000:]
    return status, round(time.perf_counter() - t0, 1), tail


# ------------------------------------------------------------------ child stages
def stage_env(simulate):
    import numpy as np
    import nnx
    info = {"python": platform.python_version(), "numpy": np.__version__, "simulated": simulate}
    import cupy
    rt = cupy.cuda.runtime
    info["cupy"] = cupy.__version__
    for key, fn in (("cuda_runtime", "runtimeGetVersion"), ("driver", "driverGetVersion")):
        try:
            info[key] = getattr(rt, fn)()
        except Exception as exc:
            info[key] = f"error: {exc}"
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    be = nnx.backend.create("cuda")  # raises BackendUnavailableError with the reason
    props = rt.getDeviceProperties(be.device.id)
    name = props["name"]
    info["gpu"] = name.decode() if isinstance(name, bytes) else name
    info["compute_capability"] = f"{props.get('major')}.{props.get('minor')}"
    x = np.random.default_rng(0).standard_normal((257, 33)).astype(np.float32)
    got = be.to_numpy(be.relu(be.asarray(x)))
    if not np.array_equal(got, np.maximum(x, 0)):
        raise AssertionError("relu<float> on the device differs from NumPy")
    info["smoke"] = "relu<float> matches NumPy"
    return info


def stage_copy(simulate):
    import numpy as np
    import nnx
    be = nnx.backend.create("cuda")
    n = (1 << 18) if simulate else (1 << 28)        # 1 MiB / 1 GiB of float32
    a = be.asarray(np.ones(n, np.float32))
    b = be.xp.empty_like(a)
    b[...] = a
    be.synchronize()
    times = []
    for _ in range(3 if simulate else 10):
        t0 = time.perf_counter()
        b[...] = a
        be.synchronize()                             # clocks read after the device finished
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"bytes": 2 * a.nbytes, "best_s": best, "gb_per_s": 2 * a.nbytes / best / 1e9}


def stage_digits(simulate):
    import numpy as np
    import nnx
    import nnx.models  # noqa: F401
    from nnx import nn
    from nnx.data import load_digits
    from nnx.evaluate import predict
    from nnx.optim import SGD
    xtr, ytr, xte, yte = load_digits("float32")
    epochs, batch = (1, 16) if simulate else (8, 64)
    if simulate:
        xtr, ytr, xte, yte = xtr[:32], ytr[:32], xte[:32], yte[:32]
    out = {"epochs": epochs, "batch": batch, "train": len(xtr), "test": len(xte)}
    for name in ("cuda", "cpu"):
        be = nnx.backend.use(name)
        nnx.manual_seed(0)
        model = nnx.models.get("simple_cnn", in_channels=1, num_classes=10, image_size=8)
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
        crit = nn.CrossEntropyLoss()
        order = np.random.default_rng(0)
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = order.permutation(len(xtr))
            for i in range(0, len(xtr), batch):
                idx = perm[i:i + batch]
                opt.zero_grad()
                crit(model(be.asarray(xtr[idx])), be.asarray(ytr[idx]))
                model.backward(crit.backward())
                opt.step()
        be.synchronize()
        acc = float((predict(model, xte) == yte).mean())
        out[name] = {"test_accuracy": acc, "train_s": round(time.perf_counter() - t0, 2)}
    out["accuracy_gap"] = abs(out["cuda"]["test_accuracy"] - out["cpu"]["test_accuracy"])
    # same seed and data: the runs differ only by float rounding, so accuracies stay close
    out["ok"] = out["accuracy_gap"] <= (0.25 if simulate else 0.05)
    if not out["ok"]:
        raise AssertionError(f"cuda vs cpu test accuracy differ by {out['accuracy_gap']:.3f}")
    return out


def stage_graph(simulate):
    import numpy as np
    import nnx
    import nnx.models  # noqa: F401
    from nnx.backend.cuda_graph import CapturedStep
    be = nnx.backend.use("cuda")
    batch, repeats = (8, 3) if simulate else (128, 200)
    nnx.manual_seed(0)
    model = nnx.models.get("simple_cnn")
    rng = np.random.default_rng(0)
    for p in model.parameters():   # fixed gradients: the optimizer step alone is captured
        p.grad = be.asarray(rng.standard_normal(p.data.shape).astype(p.data.dtype))
    opt = nnx.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def per_step_ms(fn):
        fn()
        be.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        be.synchronize()
        return (time.perf_counter() - t0) / repeats * 1e3

    out = {"model": "simple_cnn", "batch": batch, "eager_sgd_step_ms": per_step_ms(opt.step)}
    captured = CapturedStep(be, opt.step)
    events = getattr(captured.graph, "events", None)   # the fake keeps them; CuPy does not
    out["captured_launches"] = (None if events is None
                                else sum(e[0] == "launch" for e in events))
    if simulate:
        out["graph_sgd_step_ms"] = "not simulated (the fake cannot replay a graph)"
    else:
        out["graph_sgd_step_ms"] = per_step_ms(captured)
    crit = nnx.nn.CrossEntropyLoss()
    x = be.asarray(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32))
    y = be.asarray(rng.integers(0, 10, batch))
    loss = be.xp.zeros((), np.float32)     # allocated before capture: read after a replay

    def train_step(xb, yb):   # persistent gradients: see nnx/backend/cuda_graph.py
        loss[...] = crit(model(xb), yb)
        opt.zero_grad(set_to_none=False)
        model.backward(crit.backward(), input_grad=False)
        opt.step()
    out["eager_train_step_ms"] = ("not timed in simulation" if simulate
                                  else per_step_ms(lambda: train_step(x, y)))
    try:
        step = CapturedStep(be, train_step, x, y)
        out["full_step_capture"] = "captured"
    except Exception as exc:  # the reason is the result here
        out["full_step_capture"] = f"refused: {str(exc).splitlines()[0][:300]}"
    else:
        out["graph_train_step_ms"] = ("not simulated (the fake cannot replay a graph)"
                                      if simulate else per_step_ms(lambda: step(x, y)))
    return out


def stage_nccl(simulate):
    import types

    import numpy as np
    import nnx
    import nnx.models  # noqa: F401
    from nnx.distributed import DistributedDataParallel
    from nnx.distributed.nccl import NcclReducer
    be = nnx.backend.use("cuda")
    nccl = None
    if simulate:
        import fake_nccl     # tests/cuda_sim is on the path (_simulate_cupy)
        nccl = fake_nccl
    # a job of one process: the unique id needs no MPI broadcast
    one = types.SimpleNamespace(rank=0, size=1, bcast_object=lambda obj, root=0: obj)
    reducer = NcclReducer(one, nccl)
    # (simulated: the small CNN, whose kernels the earlier stages compiled already)
    name, batch, repeats = ("simple_cnn", 2, 1) if simulate else ("resnet", 128, 20)
    nnx.manual_seed(0)
    model = nnx.models.get(name)
    ddp = DistributedDataParallel(model, one, broadcast=False)
    opt = nnx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nnx.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = be.asarray(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32))
    y = be.asarray(rng.integers(0, 10, batch))

    def step():
        crit(model(x), y)
        opt.zero_grad()
        model.backward(crit.backward(), input_grad=False)
        for bucket in ddp.buckets:
            bucket.gather()
            reducer.allreduce_(bucket.flat)
        opt.step()

    step()
    flat = ddp.buckets[0].flat
    before = be.to_numpy(flat).copy()
    reducer.allreduce_(flat)
    if not np.array_equal(be.to_numpy(flat), before):   # one rank: the sum is the input
        raise AssertionError("1-rank NCCL all-reduce changed the gradients")
    be.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        reducer.allreduce_(flat)
    be.synchronize()
    reduce_ms = (time.perf_counter() - t0) / repeats * 1e3
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    be.synchronize()
    return {"model": name, "batch": batch, "buckets": len(ddp.buckets),
            "bytes_per_step": ddp.bytes_per_step, "allreduce_ms": reduce_ms,
            "allreduce_gb_per_s": flat.nbytes / reduce_ms / 1e6,
            "train_step_ms": (time.perf_counter() - t0) / repeats * 1e3,
            "simulated_nccl": simulate}


CHILD = {"env": stage_env, "copy": stage_copy, "digits": stage_digits, "graph": stage_graph,
         "nccl": stage_nccl}


def child_main(args):
    if args.simulate:
        _simulate_cupy()
    result = CHILD[args.stage](args.simulate)
    _write_atomic(args.result, json.dumps(result, indent=2, default=str))


# ------------------------------------------------------------------ parent
class Run:
    def __init__(self, args):
        self.args = args
        self.sim = args.simulate
        self.budget = BUDGET_SIM if self.sim else BUDGET
        self.name = "gpu_check_sim" if self.sim else "gpu_check"
        self.dirs = [os.path.abspath(args.results_dir)]
        if args.out and os.path.abspath(args.out) not in self.dirs:
            self.dirs.append(os.path.abspath(args.out))
        self.work = os.path.join(self.dirs[-1], f"{self.name}_logs")
        os.makedirs(self.work, exist_ok=True)
        self.deadline = time.perf_counter() + args.total_s
        self.stages = {}
        self.t0 = time.time()

    def left(self, stage):
        return max(5.0, min(self.budget[stage], self.deadline - time.perf_counter()))

    def child(self, stage):
        result = os.path.join(self.work, f"{stage}.json")
        if os.path.exists(result):
            os.remove(result)
        cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--result", result]
        status, secs, tail = _run(cmd + (["--simulate"] if self.sim else []), self.left(stage),
                                  os.path.join(self.work, f"{stage}.log"))
        data = None
        if os.path.exists(result):
            with open(result) as f:
                data = json.load(f)
        return status, secs, tail, data

    def record(self, stage, status, secs, detail=None, tail=None):
        self.stages[stage] = {"status": status, "seconds": secs, "detail": detail}
        if status != "pass" and tail:
            self.stages[stage]["log_tail"] = tail[-1500:]
        self.write()
        print(f"[gpu_check] {stage:10s} {status:22s} {secs:7.1f} s", flush=True)

    def bench(self, stage, script, args):
        status, secs, tail = _run(_script_cmd(script, args, self.sim), self.left(stage),
                                  os.path.join(self.work, f"{stage}.log"))
        tag = "gpu_check_sim" if self.sim else "gpu_check"
        path = os.path.join(self.dirs[-1], f"{stage}_cuda_{tag}.json")
        data = None
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            for d in self.dirs[:-1]:  # the benchmark wrote into the last; copy to the others
                for ext in ("json", "md"):
                    src = path[:-4] + "md" if ext == "md" else path
                    if os.path.exists(src):
                        with open(src) as f:
                            _write_atomic(os.path.join(d, os.path.basename(src)), f.read())
        return status, secs, tail, data

    # -------------------------------------------------------------- stages
    def run_env(self):
        status, secs, tail, data = self.child("env")
        self.env = data or {}
        self.record("env", status, secs, data, tail)
        return status == "pass"

    def run_tests(self):
        if self.sim:  # the GPU cases skip here; run their simulated twins (a quick subset)
            runs = {"sim": ["tests/test_backend_cuda.py", "-k",
                            "sim and (elementwise or pooling)"]}
        else:         # every gpu-marked test, then the compiler/API checks (not gpu-marked)
            runs = {"gpu": ["-m", "gpu", "tests"],
                    "nvrtc_conformance": ["tests/test_kernels_nvrtc.py",
                                          "tests/test_cupy_conformance.py"]}
        statuses, counts, secs, tails = [], {}, 0.0, ""
        for name, sel in runs.items():
            junit = os.path.join(self.work, f"tests_{name}.xml")
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                   f"--junitxml={junit}", *sel]
            status, s_, tail = _run(cmd, self.left("tests") - secs,
                                    os.path.join(self.work, f"tests_{name}.log"))
            statuses.append(status)
            counts[name] = _junit_counts(junit)
            secs += s_
            tails += tail[-1200:]
        status = next((s_ for s_ in statuses if s_ != "pass"), "pass")
        self.record("tests", status, round(secs, 1), counts, tails)

    def run_copy(self):
        status, secs, tail, data = self.child("copy")
        self.copy = data
        self.record("copy", status, secs, data, tail)

    def run_ops(self):
        args = ["--backend", "cuda", "--out", self.dirs[-1], "--tag",
                "gpu_check_sim" if self.sim else "gpu_check"]
        args += (["--quick", "--no-torch", "--repeats", "2", "--warmup", "0", "--budget-s",
                  "0.2", "--only", "tanh,ce,optim"] if self.sim
                 else ["--repeats", "15", "--budget-s", "1.0"])
        status, secs, tail, data = self.bench("ops", "ops.py", args)
        detail = None
        if data:
            copy_gbs = (self.copy or {}).get("gb_per_s")
            rows = []
            for r in data.get("ops", []):
                gbs = r.get("nnx", {}).get("gb_per_s")
                rows.append({"op": r.get("op"), "size": r.get("size"),
                             "nnx_median_ms": r.get("nnx", {}).get("median_ms"),
                             "gb_per_s": gbs, "ratio_vs_torch": r.get("ratio"),
                             "share_of_copy": gbs / copy_gbs if gbs and copy_gbs else None})
            detail = {"copy_gb_per_s": copy_gbs, "ops": rows}
        self.record("ops", status, secs, detail, tail)

    def run_train_step(self):
        args = ["--backend", "cuda", "--out", self.dirs[-1], "--tag",
                "gpu_check_sim" if self.sim else "gpu_check", "--models", "simple_cnn,resnet"]
        # simulated: one step per framework (--block 1), a smoke run of the code path
        args += (["--batch-sizes", "2", "--repeats", "1", "--warmup", "0", "--budget-s", "0.1",
                  "--block", "1"]
                 if self.sim else ["--batch-sizes", "32,128,512", "--repeats", "10",
                                   "--budget-s", "6"])
        status, secs, tail, data = self.bench("train_step", "train_step.py", args)
        self.record("train_step", status, secs,
                    {"torch_skipped": data.get("torch_skipped"), "runs": data.get("runs")}
                    if data else None, tail)

    def run_digits(self):
        status, secs, tail, data = self.child("digits")
        self.record("digits", status, secs, data, tail)

    def run_graph(self):
        status, secs, tail, data = self.child("graph")
        self.record("graph", status, secs, data, tail)

    def run_nccl(self):
        status, secs, tail, data = self.child("nccl")
        self.record("nccl", status, secs, data, tail)

    # -------------------------------------------------------------- output
    def write(self):
        env = getattr(self, "env", {}) or {}
        payload = {"check": self.name, "simulated": self.sim, "started": self.t0,
                   "environment": env, "stages": self.stages,
                   "passed": all(s["status"] == "pass" for s in self.stages.values())}
        md = [f"# {self.name}", "",
              f"GPU: {env.get('gpu')} (cc {env.get('compute_capability')}), driver "
              f"{env.get('driver')}, CUDA runtime {env.get('cuda_runtime')}, CuPy "
              f"{env.get('cupy')}, PyTorch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
              f"NumPy {env.get('numpy')}, Python {env.get('python')}", "",
              "| stage | status | seconds |", "|---|---|---|"]
        md += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in self.stages.items()]
        md += ["", "```json", json.dumps({k: v.get("detail") for k, v in self.stages.items()},
                                         indent=1, default=str)[:20000], "```", ""]
        for d in self.dirs:
            _write_atomic(os.path.join(d, f"{self.name}.json"),
                          json.dumps(payload, indent=2, default=str) + "\n")
            _write_atomic(os.path.join(d, f"{self.name}.md"), "\n".join(md))
        return payload

    def table(self):
        print("\n stage       status                  seconds")
        for k, v in self.stages.items():
            print(f" {k:11s} {v['status']:22s} {v['seconds']:8.1f}")
        ok = all(s["status"] == "pass" for s in self.stages.values())
        print(f" {'OVERALL':11s} {'PASS' if ok else 'FAIL'}")
        return ok


def _junit_counts(path):
    try:
        import xml.etree.ElementTree as ET
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    except Exception as exc:  # no report (killed, or pytest crashed)
        return {"error": str(exc)}


def main(argv=None):
    args = parse_args(argv)
    if args.stage:
        return child_main(args)
    run = Run(args)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not run.run_env():  # always first: the backend must start, or nothing else can run
        print("[gpu_check] the cuda backend does not start; stopping. Reason:\n"
              + run.stages["env"].get("log_tail", "")[-800:])
        run.table()
        return 1
    run.copy = None
    for stage in wanted:
        if stage != "env":
            getattr(run, f"run_{stage}")()
    for d in run.dirs:
        print(f"[gpu_check] results: {os.path.join(d, run.name)}.{{json,md}}")
    return 0 if run.table() else 1


if __name__ == "__main__":
    sys.exit(main())
