"""A real ``python -m nnx.train`` killed with SIGKILL at random moments, many times over.

Settings that save often: digits, one batch of 8 per epoch, so every epoch (a fraction of a
second) rewrites the log, the checkpoint and often ``best.npz``.  Each round starts the
trainer (fresh, or ``--resume`` once a checkpoint exists) and kills it at a random moment:
during start-up (resume's own log rewrite included), at a random time in training, or right
when a temporary file of a save appears (mid-write).  After every kill:

* the checkpoint (if one exists yet) and ``best.npz`` load with nnx's loader, into a model;
* every line of ``log.jsonl`` parses, the epochs are 1..n without gaps, and n is the
  checkpoint's epoch or one more (the log is written just before the checkpoint);
* the epoch count never goes back, and the next ``--resume`` says it continues after it;
* a temporary left by a killed save is gone once that target has been saved again.

Each resumed round asks for 3 more epochs (``--epochs`` may grow on resume, exactly so with
``--schedule none``), so a round is short whether or not the kill comes first.  A last
resume runs to completion; its weights and log must equal those of one uninterrupted run
(the CPU backend resumes bit-exactly).
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

import nnx  # noqa: E402
from nnx import models  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--dataset", "digits", "--model", "simple_cnn", "--backend", "cpu",
            "--batch-size", "8", "--max-steps-per-epoch", "1", "--schedule", "none",
            "--progress", "none"]
TARGETS = ("checkpoint.npz", "best.npz", "log.jsonl")
TEMP = re.compile(r"\.(checkpoint\.npz|best\.npz|log\.jsonl)\.([1-9][0-9]*)\.[0-9a-f]{8}\.tmp")
MIN_KILLS, MAX_KILLS, MAX_ROUNDS = 16, 30, 70
STARTED = "epochs of"           # the trainer's line once training begins
TIMEOUT = 180.0                 # per process, for a very loaded machine


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Trainer:
    """One ``python -m nnx.train`` process writing its output to a file."""

    def __init__(self, out: Path, epochs: int, resume: bool, stdout: Path):
        cmd = [sys.executable, "-m", "nnx.train", *SETTINGS, "--out", str(out),
               "--epochs", str(epochs), *(["--resume"] if resume else [])]
        self.stdout = stdout
        with open(stdout, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(),
                                         cwd=out.parent)
        self.t0 = time.monotonic()
        self.started_at = None

    def text(self) -> str:
        return self.stdout.read_text(errors="replace")

    def wait_started(self) -> bool:
        """Wait for the training-start line; False if the process ended first."""
        while time.monotonic() - self.t0 < TIMEOUT:
            if STARTED in self.text():
                self.started_at = time.monotonic()
                return True
            if self.proc.poll() is not None:
                return STARTED in self.text()
            time.sleep(0.005)
        raise AssertionError(f"the trainer did not start within {TIMEOUT} s:\n{self.text()}")

    def kill(self) -> bool:
        """SIGKILL; False if the process had already ended."""
        if self.proc.poll() is not None:
            return False
        self.proc.kill()
        self.proc.wait(TIMEOUT)
        return True

    def finish(self) -> int:
        return self.proc.wait(TIMEOUT)


def _temps(out: Path) -> dict[str, tuple[str, int]]:
    """Temporaries of the trainer's targets: name -> (target, writer pid)."""
    found = {}
    for name in os.listdir(out) if out.exists() else ():
        m = TEMP.fullmatch(name)
        if m:
            found[name] = (m.group(1), int(m.group(2)))
        else:
            assert name in TARGETS, f"unexpected file {name} in {out}"
    return found


def _signature(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _check_files(out: Path, ctx: str) -> int:
    """Everything a killed run left must be usable; returns the checkpoint's epochs done."""
    done = 0
    for name in ("checkpoint.npz", "best.npz"):
        path = out / name
        if not path.exists():
            continue
        extra = nnx.load(path)["extra"]
        spec = extra["model_spec"]
        model = models.get(spec["name"], **spec["kwargs"])
        nnx.load(path, model)
        if name == "checkpoint.npz":
            done = extra["epochs_done"]
            assert extra["partial"] is None, ctx       # only Ctrl-C saves mid-epoch
    log = out / "log.jsonl"
    text = log.read_text() if log.exists() else ""
    assert text == "" or text.endswith("\n"), f"{ctx}: torn last line {text[-80:]!r}"
    epochs = []
    for line in text.splitlines():
        try:
            epochs.append(json.loads(line)["epoch"])
        except (json.JSONDecodeError, KeyError) as exc:
            raise AssertionError(f"{ctx}: corrupt log line {line!r}") from exc
    assert epochs == list(range(1, len(epochs) + 1)), f"{ctx}: log epochs {epochs}"
    assert done <= len(epochs) <= done + 1, f"{ctx}: log has {len(epochs)}, checkpoint {done}"
    return done


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith(("model/", "optim/"))}


def _records(out):
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
            for line in (out / "log.jsonl").read_text().splitlines()]


def test_sigkill_at_random_moments_never_breaks_the_run(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    out = tmp_path / "run"
    ckpt = out / "checkpoint.npz"
    done, kills, mid_write, resumes_seen, rounds = 0, 0, 0, 0, 0
    killed_pids: set[int] = set()
    stale: dict[str, tuple[str, object]] = {}   # temp -> (target, target's signature then)
    startup, epoch_time = [], [0.0, 0]           # seconds to start; (seconds, epochs) trained
    while (kills < MIN_KILLS or mid_write < 2) and kills < MAX_KILLS:
        rounds += 1
        assert rounds <= MAX_ROUNDS, f"seed {seed}: {kills} kills in {rounds} rounds"
        resume = ckpt.exists()
        t = Trainer(out, done + 3, resume, tmp_path / f"round{rounds}.txt")
        mode = rnd.choices(["startup", "write", "random"], [0.15, 0.35, 0.5])[0]
        ctx = f"seed {seed}, round {rounds} ({mode}, resume={resume}, done={done})"
        before = set(_temps(out))
        if mode == "startup":
            time.sleep(rnd.uniform(0, np.median(startup) if startup else 1.0))
        elif t.wait_started():
            startup.append(t.started_at - t.t0)
            per_epoch = epoch_time[0] / epoch_time[1] if epoch_time[1] else 0.3
            if mode == "random":
                time.sleep(rnd.uniform(0, 3 * per_epoch))
            else:   # kill as soon as a save's temporary appears (or when it ends)
                while t.proc.poll() is None and set(_temps(out)) <= before:
                    time.sleep(0.0005)
                time.sleep(rnd.uniform(0, 0.002))
        if t.kill():
            kills += 1
            killed_pids.add(t.proc.pid)
        else:
            assert t.proc.returncode == 0, f"{ctx}:\n{t.text()}"
        new_done = _check_files(out, ctx)
        assert new_done >= done, f"{ctx}: the checkpoint went back to epoch {new_done}"
        if t.started_at is not None:
            epoch_time[0] += time.monotonic() - t.started_at
            epoch_time[1] += new_done - done
        if resume and STARTED in t.text():
            assert f"resuming {ckpt} at epoch {done + 1}\n" in t.text(), f"{ctx}:\n{t.text()}"
            resumes_seen += 1
        # temporaries: only of killed writers, and gone once their target was saved again
        temps = _temps(out)
        for name, (target, sig) in list(stale.items()):
            if name not in temps:
                del stale[name]
            else:
                assert _signature(out / target) == sig, \
                    f"{ctx}: {name} survived a later save of {target}"
        for name, (target, pid) in temps.items():
            assert pid in killed_pids, f"{ctx}: {name} of a writer that was not killed"
            if name not in stale:
                stale[name] = (target, _signature(out / target))
                mid_write += 1
        done = new_done
    assert kills >= MIN_KILLS and mid_write >= 1, (seed, kills, mid_write)
    assert resumes_seen >= 3 and done >= 3, (seed, resumes_seen, done)

    # a last resume runs to completion and removes every temporary of what it saves
    final = done + 2
    t = Trainer(out, final, True, tmp_path / "final.txt")
    assert t.finish() == 0, t.text()
    assert f"resuming {ckpt} at epoch {done + 1}\n" in t.text()
    assert _check_files(out, f"seed {seed}, final") == final
    assert not [n for n, (target, _) in _temps(out).items() if target != "best.npz"]
    for name, (target, sig) in stale.items():    # best.npz is saved only when it improves
        assert name not in _temps(out) or _signature(out / target) == sig, name
    # ... and ends exactly where one uninterrupted run of as many epochs ends
    ref = tmp_path / "reference"
    t = Trainer(ref, final, False, tmp_path / "reference.txt")
    assert t.finish() == 0, t.text()
    a, b = _arrays(ckpt), _arrays(ref / "checkpoint.npz")
    assert sorted(a) == sorted(b) and any(k.startswith("optim/") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"seed {seed}: {k}")
    assert _records(out) == _records(ref), f"seed {seed}"
    print(f"seed {seed}: {kills} kills ({mid_write} mid-write) in {rounds} rounds, "
          f"{final} epochs")
