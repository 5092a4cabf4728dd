"""bench/gpu_check.py works end to end before a GPU is ever lent: ``--simulate`` runs every
stage on the CPU through the simulated CuPy (tiny sizes) and must pass and write its results
(JSON + Markdown, into --out and the results directory) with the environment recorded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_sim"))
import sim_backend  # noqa: E402


@pytest.mark.slow
def test_gpu_check_simulate_passes(tmp_path):
    if sim_backend.available():
        pytest.skip(sim_backend.available())
    out, repo = tmp_path / "out", tmp_path / "repo_results"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--simulate",
                           "--out", str(out), "--results-dir", str(repo)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "OVERALL     PASS" in proc.stdout
    for d in (out, repo):
        data = json.loads((d / "gpu_check_sim.json").read_text())
        assert data["passed"] and data["simulated"]
        assert (d / "gpu_check_sim.md").read_text().startswith("# gpu_check_sim")
        assert (d / "ops_cuda_gpu_check_sim.json").exists()
        assert (d / "train_step_cuda_gpu_check_sim.json").exists()
    st = data["stages"]
    assert list(st) == ["env", "tests", "copy", "ops", "train_step", "digits", "graph", "nccl"]
    assert all(s["status"] == "pass" for s in st.values())
    assert st["env"]["detail"]["smoke"] == "relu<float> matches NumPy"
    assert st["tests"]["detail"]["sim"]["tests"] > 0 and not st["tests"]["detail"]["sim"]["failures"]
    assert st["copy"]["detail"]["gb_per_s"] > 0
    assert st["ops"]["detail"]["ops"] and all(r["share_of_copy"] for r in st["ops"]["detail"]["ops"]
                                              if r["gb_per_s"])
    assert {r["model"] for r in st["train_step"]["detail"]["runs"]} == {"simple_cnn", "resnet"}
    assert st["digits"]["detail"]["cuda"]["test_accuracy"] >= 0
    assert st["graph"]["detail"]["captured_launches"] == 1     # the fused SGD launch
    assert st["graph"]["detail"]["full_step_capture"] == "captured"   # set_to_none=False
    nccl = st["nccl"]["detail"]
    assert nccl["simulated_nccl"] and nccl["bytes_per_step"] > 0 and nccl["buckets"] >= 1


def test_gpu_check_stops_early_when_the_backend_cannot_start(tmp_path):
    """No usable CuPy/GPU (here: the real CuPy without a driver, or no CuPy): one readable
    failure of the env stage, nothing else run, results still written."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out",
                           str(out), "--results-dir", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        pytest.skip("a real GPU is present")
    except Exception:
        pass
    assert proc.returncode == 1
    assert "does not start; stopping" in proc.stdout
    data = json.loads((out / "gpu_check.json").read_text())
    assert list(data["stages"]) == ["env"] and not data["passed"]
    assert "cuda" in data["stages"]["env"]["log_tail"]
