"""The trainer's building blocks: transforms, optimizer and schedule from the settings,
the per-step metrics, the progress display, the Ctrl-C flag, and the JSON-lines log with its
plot.  :mod:`nnx.train_loop` runs a training run out of them; :mod:`nnx.train` is the entry
point."""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

from . import backend as B
from .atomic_files import atomic_open


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became NaN/inf."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a checkpoint was saved (or, on a second Ctrl-C, deliberately not)."""


# ============================================================================ building blocks
def build_transforms(ds, augment: bool):
    from .data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip
    norm = Normalize(ds.mean, ds.std)
    if not augment:
        return norm, norm
    if ds.name == "digits":   # small shifts only: mirrored digits are other symbols
        train = Compose([RandomCrop(ds.image_size, padding=1), norm])
    else:
        train = Compose([RandomCrop(ds.image_size, padding=4), RandomHorizontalFlip(), norm])
    return train, norm


def build_optimizer(cfg: dict, model):
    from . import optim
    params = list(model.parameters())
    if cfg["optimizer"] == "sgd":
        return optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                         nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])
    cls = optim.Adam if cfg["optimizer"] == "adam" else optim.AdamW
    return cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _schedule_class():
    from .optim.lr_scheduler import LRScheduler

    class StepwiseSchedule(LRScheduler):
        """Per-step schedule: linear warm-up ``lr·(t+1)/W`` for ``t < W`` steps, then, with
        ``u = t - W`` and ``U = T - W``: constant (``none``), ``lr·gamma^⌊u/S⌋`` (``step``)
        or ``lr·(1 + cos(π u/U))/2`` (``cosine``).  Closed form in ``t``."""

        def __init__(self, optimizer, kind, total_steps, warmup_steps=0, step_steps=1,
                     gamma=0.1):
            self.kind, self.total_steps = kind, int(total_steps)
            self.warmup_steps, self.step_steps = int(warmup_steps), max(1, int(step_steps))
            self.gamma = float(gamma)
            super().__init__(optimizer)

        def _lr_at(self, base_lr, t, i):
            w = self.warmup_steps
            if t < w:
                return base_lr * (t + 1) / w
            u, span = t - w, max(1, self.total_steps - w)
            if self.kind == "step":
                return base_lr * self.gamma ** (u // self.step_steps)
            if self.kind == "cosine":
                return base_lr * (1 + math.cos(math.pi * min(u, span) / span)) / 2
            return base_lr

    return StepwiseSchedule


def build_scheduler(cfg: dict, optimizer, steps_per_epoch: int):
    from .optim.lr_scheduler import OneCycleLR
    total = cfg["epochs"] * steps_per_epoch
    warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    if cfg["schedule"] == "onecycle":
        pct = warmup / total if warmup else 0.3
        return OneCycleLR(optimizer, max_lr=cfg["lr"], total_steps=total,
                          pct_start=min(max(pct, 1.0 / total), 0.9),
                          cycle_momentum=cfg["optimizer"] == "sgd" and cfg["momentum"] > 0)
    step_epochs = cfg["step_size"] or max(1, cfg["epochs"] // 3)
    return _schedule_class()(optimizer, cfg["schedule"], total, warmup,
                             step_epochs * steps_per_epoch, cfg["gamma"])


def _all_finite(model) -> bool:
    xp = B.get().xp
    # one flag per parameter, stacked on the device: the host reads one value (one sync)
    flags = [xp.isfinite(p.data).all() for p in model.parameters()]
    return bool(xp.stack(flags).all()) if flags else True


class _StepMetrics:
    """The training loop's loss/accuracy sums, kept as arrays of the backend: a step adds to
    them without the host waiting for the device; :meth:`read` (one synchronisation on a
    GPU) runs only every ``every`` steps and when the caller needs the numbers (epoch end,
    interrupt).  A non-finite loss makes ``loss_sum`` non-finite, so checking it at the read
    points covers every step since the previous read (``every=1``: before each update)."""

    def __init__(self, loss_sum=0.0, correct=0, seen=0, every=1):
        self.loss_sum, self.correct, self.seen = loss_sum, correct, seen
        self.every, self.pending, self.shown = max(1, int(every)), 0, float("nan")
        self.last = None

    def add(self, loss, logits, y) -> None:
        n = int(y.shape[0])   # a shape: host data, no synchronisation
        self.last = loss
        self.loss_sum, self.correct = B.get().step_metrics_add(self.loss_sum, self.correct,
                                                               loss, n, logits, y)
        self.seen += n
        self.pending += 1

    def due(self) -> bool:
        return self.pending >= self.every

    def read(self):
        """``(last loss, loss sum, correct count)`` as host numbers."""
        self.pending = 0
        if self.last is not None:
            self.shown = float(self.last)
        return self.shown, float(self.loss_sum), int(self.correct)


def _read_every(be) -> int:
    """Steps between metric reads: every step where reading is free (the CPU), else 50."""
    return 1 if be.name == "cpu" else 50


class _Progress:
    """A tqdm bar when asked for / on a terminal, else a plain line every ~10 s."""

    def __init__(self, mode, total, epoch, epochs):
        self.bar = None
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.last = time.perf_counter()
        self.mode = mode
        if mode in ("auto", "bar"):
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
                if mode == "bar":
                    print("nnx-train: tqdm is not installed (pip install 'nnx[progress]'); "
                          "printing plain progress lines", file=sys.stderr)
            if tqdm is not None and (mode == "bar" or sys.stderr.isatty()):
                self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=False,
                                unit="step", dynamic_ncols=True)
            else:
                self.mode = "lines"

    def update(self, step, loss, img_s):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.0f}", refresh=False)
            self.bar.update(step - self.bar.n)   # tqdm throttles the redraws itself
        elif self.mode == "lines" and time.perf_counter() - self.last >= 10.0:
            self.last = time.perf_counter()
            print(f"  epoch {self.epoch}/{self.epochs} step {step}/{self.total} "
                  f"loss {loss:.4f} {img_s:.0f} img/s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _InterruptFlag:
    """First Ctrl-C sets ``requested``; a second one raises KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nnnx-train: Ctrl-C: finishing this step and saving a checkpoint (press "
              "Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _write_log(path: Path, records) -> None:
    """Rewrite the JSON-lines log atomically (temp file + rename), so that a crash at any
    moment leaves either the old log or the new one, each line whole.  (Watch it with
    ``tail -F``, which follows the rename.)"""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def read_log(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log_path, png_path) -> bool:
    """Loss and accuracy curves from ``log.jsonl``; False (with a message) without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("nnx-train: --plot needs matplotlib (pip install 'nnx[plot]'); no curves "
              "written", file=sys.stderr)
        return False
    rec = read_log(log_path)
    ep = [r["epoch"] for r in rec]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [r["train_loss"] for r in rec], marker="o")
    a1.set(xlabel="epoch", ylabel="train loss", title="loss")
    a2.plot(ep, [r["train_acc"] for r in rec], marker="o", label="train")
    a2.plot(ep, [r["test_acc"] for r in rec], marker="o", label="test")
    a2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    a2.legend()
    fig.tight_layout()
    try:
        with atomic_open(png_path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return True
