"""Data-parallel training with real processes (``mpiexec -n 2``): the same parameters as
one process at the same global batch (SGD and Adam, simple_cnn and the ResNet with
SyncBatchNorm); one checkpoint, by rank 0, from which a distributed resume continues as a
1-process resume does; a rank that raises, is killed or meets a NaN ends the job promptly
with a non-zero status naming the rank; wrong setups are one line; the NCCL path on the
simulated CuPy.  Skipped where mpiexec/mpi4py are missing (``make test`` installs them)."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import mpi_jobs
from mpi_jobs import REPO, run, run_ok
from tolerances import network_rtol

pytest.importorskip("sklearn")

import nnx  # noqa: E402
from nnx import models, train  # noqa: E402
from nnx.checkpoint import read  # noqa: E402
from test_train import _cpu  # noqa: E402,F401  (autouse: the CPU backend for every test)


@pytest.fixture(autouse=True)
def _mpi():
    mpi_jobs.require_mpi()


STEPS, BATCH = 4, 32
QUICK = ["--dataset", "digits", "--progress", "none", "--batch-size", str(BATCH),
         "--max-steps-per-epoch", str(STEPS)]


def _single(out, *args):
    return train.main([*QUICK, "--out", str(out), *map(str, args)])


def _distributed(tmp_path, out, *args, n=2):
    return run_ok(n, ["-m", "nnx.train", "--distributed", *QUICK, "--out", out, *args],
                  tmp_path)


def _model_state(path):
    arrays = read(path)[0]
    return {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}


def _assert_same_training(got_path, want_path, model_name, steps, elementwise=True):
    """The two runs' weights and statistics agree to float32 summation-order drift.

    Only the order of the float32 sums differs (each rank sums its half of the batch, then
    the halves are added).  One step's gradients then differ by at most ``network_rtol``
    (first order, relative to their largest magnitude), so the parameters drift by at most
    that fraction of one step's update per step: ``steps · network_rtol`` of the distance
    the weights moved from their initial values.  Element by element for SGD; for Adam
    (``elementwise=False``) in the 2-norm of each tensor: Adam's step ``m/(√v + ε)`` is
    about ``±lr`` whatever the gradient's size, so an element whose gradient is zero up to
    rounding may step either way in the two runs; such elements are few, and the norm
    bound holds over the tensor."""
    nnx.manual_seed(0)     # the trainer's initialisation (seed 0) of the same model
    init = models.get(model_name, in_channels=1, num_classes=10, image_size=8)
    start = {k: nnx.backend.get().to_numpy(v) for k, v in init.state_dict().items()}
    rtol = steps * network_rtol(init, BATCH, 64, np.float32)
    got, want = _model_state(got_path), _model_state(want_path)
    assert list(got) == list(want)
    for k, w in want.items():
        if w.dtype.kind != "f":
            assert np.array_equal(got[k], w), k        # num_batches_tracked
            continue
        size = (lambda a: np.abs(a).max()) if elementwise else np.linalg.norm
        moved = size(w - start[k])
        assert moved > 0, f"{k} did not train"
        diff = size(got[k] - w)
        assert diff <= rtol * moved, f"{k}: |2 ranks - 1 process| = {diff:.3g} > " \
                                     f"{rtol:.3g} x movement {moved:.3g}"


# (simple_cnn with SGD: the resume test below)
@pytest.mark.parametrize("model_name, optimizer", [
    ("simple_cnn", "adam"), ("resnet", "sgd"), ("resnet", "adam")])
def test_two_ranks_train_as_one_process(tmp_path, capsys, model_name, optimizer):
    opts = ["--model", model_name, "--optimizer", optimizer, "--epochs", "1"]
    out = _distributed(tmp_path, "two", *opts)
    assert "2 processes: rank 0 pid" in out and "backend cpu over 2 processes" in out
    assert out.count("epoch 1/1:") == 1          # rank 0 alone prints
    _single(tmp_path / "one", *opts)
    _assert_same_training(tmp_path / "two" / "checkpoint.npz",
                          tmp_path / "one" / "checkpoint.npz", model_name, STEPS,
                          elementwise=optimizer == "sgd")
    # the log and the test accuracy cover every rank's share (test accuracy: equal counts)
    two = train.read_log(tmp_path / "two" / "log.jsonl")
    one = train.read_log(tmp_path / "one" / "log.jsonl")
    assert len(two) == 1 and abs(two[0]["test_acc"] - one[0]["test_acc"]) <= 2 / 360
    assert abs(two[0]["train_loss"] - one[0]["train_loss"]) <= 1e-3 * one[0]["train_loss"]


def test_checkpoint_by_rank_0_and_distributed_resume_as_one_process(tmp_path, capsys):
    opts = ["--schedule", "step", "--epochs", "1"]
    _distributed(tmp_path, "two", *opts)
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == ["best.npz", "checkpoint.npz", "log.jsonl"], files   # no temporaries
    shutil.copytree(tmp_path / "two", tmp_path / "cross")
    out = _distributed(tmp_path, "two", "--resume", "--epochs", "2")
    assert "resuming" in out and out.count("resuming") == 1
    _single(tmp_path / "one", *opts)
    _single(tmp_path / "one", "--resume", "--epochs", "2")
    _assert_same_training(tmp_path / "two" / "checkpoint.npz",
                          tmp_path / "one" / "checkpoint.npz", "simple_cnn", 2 * STEPS)
    # the 2-process checkpoint resumed by one process continues the same way
    _single(tmp_path / "cross", "--resume", "--epochs", "2")
    _assert_same_training(tmp_path / "cross" / "checkpoint.npz",
                          tmp_path / "one" / "checkpoint.npz", "simple_cnn", 2 * STEPS)
    assert [r["epoch"] for r in train.read_log(tmp_path / "two" / "log.jsonl")] == [1, 2]
    assert read(tmp_path / "two" / "checkpoint.npz")[1]["extra"]["epochs_done"] == 2


def _faulty(tmp_path, how, timeout=60.0):
    return run(2, [REPO / "tests" / "mpi_scripts" / "faulty_rank.py", 1, how, *QUICK,
                   "--distributed", "--out", tmp_path / "run", "--epochs", "1"], tmp_path,
               timeout=timeout)


def test_a_rank_raising_ends_the_job_naming_the_rank(tmp_path):
    code, out, err, seconds = _faulty(tmp_path, "raise")
    assert code != 0 and seconds < 60, (out, err)
    assert ("nnx-train: RuntimeError: injected failure [rank 1 of 2; aborting all ranks]"
            in err), (out, err)
    assert 'faulty_rank.py", line' in err        # the traceback follows
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_a_rank_killed_ends_the_job_naming_the_rank(tmp_path):
    code, out, err, seconds = _faulty(tmp_path, "kill")
    assert code != 0 and seconds < 60
    pid = re.search(r"rank 1 pid (\d+)", out).group(1)      # nnx-train's rank table
    assert re.search(rf"PID {pid}\b.*\n(.*\n)*.*Killed \(signal 9\)", out + err), out + err


def test_nan_on_one_rank_stops_every_rank_together(tmp_path):
    code, out, err, seconds = _faulty(tmp_path, "nan")
    assert code == 3 and seconds < 60, (out, err)
    lines = [line for line in err.splitlines() if "training diverged" in line]
    assert len(lines) == 1 and "epoch 1, step 2" in lines[0], err


def test_batch_not_divisible_by_the_ranks_is_one_line(tmp_path):
    code, out, err, _ = run(2, ["-m", "nnx.train", "--distributed", *QUICK[:-4],
                                "--batch-size", "33", "--out", tmp_path / "run"], tmp_path)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["nnx-train: error: --distributed: the batch size 33 (the global batch) "
                     "is not divisible by the 2 processes; give a multiple of 2"], err


def test_nccl_path_on_the_simulated_cupy(tmp_path):
    import sim_backend
    if sim_backend.available():
        pytest.skip(sim_backend.available())
    out = run_ok(2, [REPO / "tests" / "mpi_scripts" / "nccl_sim.py", tmp_path / "build"],
                 tmp_path, env={"PYTHONPATH": str(mpi_jobs.CUDA_SIM)})
    assert "rank 0: ok" in out and "rank 1: ok" in out


def test_distributed_bench_smoke(tmp_path):
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "distributed_step.py"),
                           "--quick", "--models", "simple_cnn", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "distributed_step.json").read_text())
    one, two = data["rows"]
    assert (one["procs"], two["procs"]) == (1, 2) and one["speedup_vs_1"] == 1
    # the gradient bucket holds every parameter in float32; 2 ranks also reduce it
    assert one["gradient_bytes_per_step"] == 4 * one["params"] == two["bytes_allreduced_per_step"]
    assert two["images_per_s"] > 0 and (tmp_path / "distributed_step.md").exists()
