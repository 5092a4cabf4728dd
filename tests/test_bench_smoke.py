"""The bench scripts run end to end (tiny --quick configuration in a subprocess) and write the
documented result fields.  No timing assertions: numbers come from benchmarks, not tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, tmp_path, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "bench", script), "--quick", "--repeats", "2",
           "--warmup", "1", "--threads", "1", "--out", str(tmp_path), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "NNX_BACKEND": "cpu"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _machine_ok(payload):
    m = payload["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["numpy"] and m["backend"] == "cpu"
    assert m["threads"]["requested"] == 1
    assert "bench/" in payload["command"] and "--quick" in payload["command"]
    assert payload["date"]


def test_train_step_smoke(tmp_path):
    _run("train_step.py", tmp_path, "--models", "simple_cnn", "--tag", "smoke")
    payload = json.loads((tmp_path / "train_step_cpu_smoke.json").read_text())
    md = (tmp_path / "train_step_cpu_smoke.md").read_text()
    _machine_ok(payload)
    assert payload["benchmark"] == "train_step"
    (run,) = payload["runs"]
    assert run["model"] == "simple_cnn" and run["batch"] == 32
    for key in ("median_ms", "q1_ms", "q3_ms", "min_ms", "repeats", "images_per_s"):
        assert run["nnx"][key] > 0
    assert run["peak_rss_mb"] > 0 and "gpu_memory" in run
    if payload["torch_skipped"] is None:
        assert run["torch"]["median_ms"] > 0 and run["ratio"]["median"] > 0
        assert run["first_loss"]["nnx"] == pytest.approx(run["first_loss"]["torch"], rel=1e-4)
        assert "ratio nnx/PyTorch" in md
    assert "| simple_cnn | 32 |" in md


def test_train_step_rss_per_framework(tmp_path):
    """``--rss``: each framework's step measured alone in a fresh process."""
    _run("train_step.py", tmp_path, "--models", "simple_cnn", "--tag", "rss", "--rss")
    payload = json.loads((tmp_path / "train_step_cpu_rss.json").read_text())
    (run,) = payload["runs"]
    fws = ["nnx"] + ([] if payload["torch_skipped"] else ["torch"])
    assert sorted(run["step_rss_mb"]) == sorted(fws)
    for fw in fws:
        r = run["step_rss_mb"][fw]
        assert "error" not in r, r
        # the steps allocate activations: the peak is above the resident set before them
        assert r["peak_mb"] >= r["baseline_mb"] > 0 and r["step_mb"] > 0
    assert "nnx step RSS MiB" in (tmp_path / "train_step_cpu_rss.md").read_text()


def test_train_step_without_torch_says_skipped(tmp_path):
    out = _run("train_step.py", tmp_path, "--models", "simple_cnn", "--no-torch")
    payload = json.loads((tmp_path / "train_step_cpu.json").read_text())
    assert "skipped" in out and payload["torch_skipped"]
    assert "torch" not in payload["runs"][0]


def test_ops_smoke(tmp_path):
    _run("ops.py", tmp_path)
    payload = json.loads((tmp_path / "ops_cpu.json").read_text())
    _machine_ok(payload)
    ops = {r["op"] for r in payload["ops"]}
    assert {"im2col", "col2im", "conv2d forward", "conv2d backward", "maxpool2d forward",
            "maxpool2d backward", "tanh backward", "softmax CE fwd+bwd", "SGD momentum step",
            "Adam step"} <= ops
    for r in payload["ops"]:
        assert r["nnx"]["median_ms"] > 0
        if r["op"] in ("tanh backward", "SGD momentum step", "Adam step"):
            assert r["nnx"]["gb_per_s"] > 0
    assert (tmp_path / "ops_cpu.md").read_text().startswith("# nnx per-operation timings")


def test_cpu_paths_smoke(tmp_path):
    out = _run("cpu_paths.py", tmp_path)
    payload = json.loads((tmp_path / "cpu_paths.json").read_text())
    _machine_ok(payload)
    assert payload["machine"]["cpu_kernels"]          # says which CPU path was available
    assert set(payload["results"]) == {"numpy", "c", "c+reorder"}
    for r in payload["results"].values():
        assert r["median_ms"] > 0 and len(r["samples_ms"]) == 2
    assert "vs numpy" in out and "| c+reorder |" in (tmp_path / "cpu_paths.md").read_text()


def test_compare_checkouts_smoke(tmp_path):
    """Both workers run this checkout: same code, so the first losses must be identical."""
    cmd = [sys.executable, os.path.join(ROOT, "bench", "compare_checkouts.py"), "--before", ROOT,
           "--after", ROOT, "--models", "simple_cnn", "--batch-sizes", "8", "--rounds", "2",
           "--steps", "1", "--threads", "1", "--out", str(tmp_path), "--tag", "smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "compare_checkouts_smoke.json").read_text())
    (run,) = payload["runs"]
    assert run["same_first_loss"] and run["ratio_after_before"]["rounds"] == 2
    assert run["before"]["repeats"] == 2 and run["after"]["median_ms"] > 0
    assert "ratio after/before" in (tmp_path / "compare_checkouts_smoke.md").read_text()


def test_step_counts_smoke(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests", "cuda_sim"))
    import sim_backend
    if sim_backend.available():
        pytest.skip(sim_backend.available())
    cmd = [sys.executable, os.path.join(ROOT, "bench", "step_counts.py"), "--models",
           "simple_cnn", "--batch", "4", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(tmp_path / "step_counts.json") as f:
        row = json.load(f)["rows"][0]
    assert row["launches"] > 0 and row["launch_names"]["sgd_update_multi<float>"] == 1
    # strict equality depends on whether the fake's allocator reused the gradients'
    # addresses (the optimizer's pointer-table upload); without that upload: always equal
    assert isinstance(row["identical_consecutive_steps"], bool)
    assert row["identical_except_table_upload"] is True
    assert row["syncs"] == row["d2h"] == 0
