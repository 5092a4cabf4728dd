"""Train an image classifier: ``nnx-train`` / ``python -m nnx.train``.

Examples::

    nnx-train --dataset digits --epochs 15                    # offline, ~seconds on a CPU
    nnx-train --dataset cifar10 --model simple_cnn --backend cuda --epochs 30
    nnx-train --dataset cifar10 --data ~/datasets --resume     # continue runs/cifar10-...

Every epoch adds one JSON object to ``OUT/log.jsonl`` (epoch, train_loss, train_acc,
test_acc, lr, seconds, images_per_s), then rewrites ``OUT/checkpoint.npz`` (model,
optimizer, scheduler, loader position, RNG states, epoch, best accuracy, and the settings
and model description ``nnx-eval`` needs); ``OUT/best.npz`` holds the model with the best
test accuracy so far.  Every file is replaced atomically (temp file + rename, see
:mod:`nnx.atomic_files`), so a crash or ``kill -9`` at any moment leaves each of them loadable,
the log with whole lines only; ``--resume`` continues from the last checkpoint.

Resuming (``--resume``) restores the settings saved in the checkpoint (model, data set,
optimizer, schedule, batch size, seed, augmentation, ...), then the model, optimizer,
scheduler, data-loader position and RNG states, and continues with the next step.  A setting
given on the command line must repeat the saved one (anything else is an error: the run
would silently not be what was asked for); see :mod:`nnx.train_options`.  On the ``cpu``
backend an interrupted and resumed run therefore ends with bit-identical weights to an
uninterrupted one (on ``cuda`` too, if the backend can save its generator state; otherwise
the augmentation generator is re-seeded from the position and the run continues correctly
but not bit-identically).  ``--resume --epochs N`` extends a run to ``N`` epochs, exactly as
if it had been planned for ``N`` with ``--schedule none`` or ``step`` (the step size is fixed
when the run starts); ``cosine`` and ``onecycle`` runs are refused, since their curve depends
on the planned length.  Resuming a finished run says so and trains nothing.  A fresh run
refuses an ``--out`` that holds a previous run's checkpoint or best model unless
``--overwrite`` is given.

Ctrl-C: the first one lets the current step finish, then saves ``checkpoint.npz`` with the
state after that step (mid-epoch: the loader position and the partial epoch statistics are
saved too) and exits with status 130; ``--resume`` continues with the next batch of the
same epoch, exactly as if there had been no interruption.  A second Ctrl-C aborts at once
without saving; the checkpoint of the last completed epoch (or step) stays intact.

A NaN/inf loss stops training before the bad update with a message naming the epoch and
step (exit status 3); the last checkpoint, written at the end of the last good epoch, is
left intact.  If CIFAR-10 is neither cached nor downloadable, the tool explains how to use
``--data`` or ``--dataset digits`` and exits with status 2.
"""
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
from .train_options import (LENGTH_BOUND_SCHEDULES, RUN_FILES, ConfigError,  # noqa: F401
                            build_parser, out_dir, prepare_out_dir, previous_run_files,
                            resolve_settings)


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


# ============================================================================ training
def _nothing_to_do(out: Path, cfg: dict, ck: dict, plot: bool) -> dict:
    """``--resume`` of a run that already finished: say so, train nothing."""
    done = ck["epochs_done"]
    how = (f"pass --epochs N (N > {done}) to train further"
           if cfg["schedule"] not in LENGTH_BOUND_SCHEDULES else
           f"its {cfg['schedule']} schedule cannot be extended; start a new run with more "
           "--epochs to train longer")
    print(f"nothing to do: the run in {out} finished its {done} epochs (test acc "
          f"{ck.get('test_acc', float('nan')):.4f}, best {ck['best_acc']:.4f}); {how}", flush=True)
    if plot:
        plot_curves(out / "log.jsonl", out / "curves.png")
    return {"test_acc": ck.get("test_acc", float("nan")), "best_acc": ck["best_acc"],
            "history": read_log(out / "log.jsonl"), "out": str(out), "model": None}


def train(args) -> dict:
    """Run training as configured by parsed ``args``; returns a summary dict."""
    import nnx
    from . import models
    from .checkpoint import load, read_extra, save
    from .data.datasets import get_dataset
    from .data.loader import DataLoader
    from .evaluate import format_report, predict
    from .nn import CrossEntropyLoss

    out = out_dir(args)
    ckpt_path = out / "checkpoint.npz"
    log_path = out / "log.jsonl"

    ck = None
    if args.resume or args.eval_only:
        if not ckpt_path.exists():
            from .checkpoint import CheckpointError
            raise CheckpointError(f"{'--resume' if args.resume else '--eval-only'}: no "
                                  f"checkpoint at {ckpt_path} (set --out to the run's "
                                  "directory)")
        ck = read_extra(ckpt_path)
        if args.resume and "settings" not in ck:
            from .checkpoint import CheckpointError
            raise CheckpointError(f"--resume: {ckpt_path} was not written by nnx-train (no "
                                  "saved settings); it cannot be resumed")
    if args.eval_only:
        saved = {"dataset": ck.get("dataset"),
                 "model": (ck.get("model_spec") or {}).get("name"), **ck.get("settings", {})}
        resolve_settings(args, saved)     # the command line may only repeat the run's settings
        if args.backend:
            B.use(args.backend)
        from .evaluate import evaluate_checkpoint
        result, classes = evaluate_checkpoint(ckpt_path, None, args.data,
                                              download=args.download is not False)
        print(format_report(result, classes))
        return {"test_acc": result["accuracy"], "eval": result}

    cfg = resolve_settings(args, ck["settings"] if ck else None,
                           ck["epochs_done"] if ck else 0)
    if ck and ck["epochs_done"] >= cfg["epochs"] and not ck["partial"]:
        return _nothing_to_do(out, cfg, ck, args.plot)
    prepare_out_dir(out)
    previous = [] if ck else previous_run_files(out)
    if previous and not args.overwrite:
        raise ConfigError(f"--out {out} holds a previous run ({', '.join(previous)}); a "
                          "fresh run would replace these files: pass --resume to continue "
                          "it, --overwrite to start over, or choose another --out")
    if args.backend:
        B.use(args.backend)
    be = B.get()
    ds = get_dataset(cfg["dataset"], args.data, download=args.download is not False)
    nnx.manual_seed(cfg["seed"])
    model_kwargs = {"in_channels": ds.in_channels, "num_classes": ds.num_classes,
                    "image_size": ds.image_size}
    model = models.get(cfg["model"], **model_kwargs)
    train_t, test_t = build_transforms(ds, cfg["augment"])
    loader = DataLoader((ds.x_train, ds.y_train), cfg["batch_size"], shuffle=True,
                        drop_last=False, seed=cfg["seed"], transform=train_t)
    steps_per_epoch = len(loader)
    if cfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, cfg["max_steps_per_epoch"])
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    criterion = CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])

    start_epoch, best_acc, partial, history = 0, 0.0, None, []
    if ck:
        fixed = {k: getattr(scheduler, k) for k in ("total_steps",) if hasattr(scheduler, k)}
        state = load(ckpt_path, model=model, optimizer=optimizer, restore_rng=True)
        scheduler.load_state_dict(state["scheduler_state"])
        scheduler.__dict__.update(fixed)   # a longer run (--epochs raised) keeps its length
        loader.load_state_dict(ck["loader"])
        start_epoch, best_acc, partial = ck["epochs_done"], ck["best_acc"], ck["partial"]
        if "backend" not in (state["rng_state"] or {}):
            # This backend cannot save its generator (e.g. CuPy): re-seed it from the
            # position instead of replaying epoch 1's augmentation (not bit-exact).
            be.manual_seed(cfg["seed"] * 1_000_003 + start_epoch * 10_007
                           + (partial["step"] if partial else 0))
        history = [r for r in read_log(log_path) if r["epoch"] <= start_epoch]
        _write_log(log_path, history)     # drop lines of epochs the checkpoint lacks
        where = (f"epoch {start_epoch + 1}, step {partial['step'] + 1}" if partial
                 else f"epoch {start_epoch + 1}")
        print(f"resuming {ckpt_path} at {where}", flush=True)
    else:
        if previous:
            print(f"--overwrite: deleting the previous run in {out} ({', '.join(previous)})",
                  flush=True)
        for name in RUN_FILES:   # a log without checkpoint: a run killed in its first epoch
            (out / name).unlink(missing_ok=True)

    meta = {"model_spec": {"name": cfg["model"], "kwargs": model_kwargs},
            "dataset": cfg["dataset"], "classes": list(ds.classes),
            "normalize": {"mean": list(ds.mean), "std": list(ds.std)}, "settings": cfg}
    print(f"{cfg['model']} ({model.num_parameters():,} parameters) on {ds.name} "
          f"({len(ds.x_train)} train / {len(ds.x_test)} test images), backend {be.name}, "
          f"{cfg['epochs']} epochs of {steps_per_epoch} steps, batch {cfg['batch_size']}, "
          f"{cfg['optimizer']} lr {cfg['lr']}, schedule {cfg['schedule']}", flush=True)
    print(f"writing {ckpt_path} (every epoch), {out / 'best.npz'} (best test accuracy) "
          f"and the log {log_path}", flush=True)

    def checkpoint(epochs_done, partial_state, test_acc):
        save(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler,
             rng_state=True, epochs_done=epochs_done, partial=partial_state,
             best_acc=best_acc, test_acc=test_acc, loader=loader.state_dict(), **meta)

    test_acc = history[-1]["test_acc"] if history else float("nan")
    with _InterruptFlag() as stop:
        for epoch in range(start_epoch, cfg["epochs"]):
            if partial is None:
                loader.set_epoch(epoch)
                partial = {"step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0,
                           "seconds": 0.0}
            model.train()
            progress = _Progress(args.progress, steps_per_epoch, epoch + 1, cfg["epochs"])
            t0 = time.perf_counter()
            step = partial["step"]
            metrics = _StepMetrics(partial["loss_sum"], partial["correct"], partial["seen"],
                                   _read_every(be))
            lr_used = optimizer.param_groups[0]["lr"]
            try:
                for xb, yb in loader:
                    step += 1
                    logits = model(xb)
                    metrics.add(criterion(logits, yb), logits, yb)
                    if metrics.due():
                        loss, total, _ = metrics.read()
                        if not math.isfinite(total):
                            criterion.check_labels()  # a bad label on the GPU: name it
                            kept = (f"the last checkpoint {ckpt_path} is intact"
                                    if ckpt_path.exists() else "no checkpoint was written yet")
                            where = (f"step {step}" if metrics.every == 1 else
                                     f"one of steps {max(1, step - metrics.every + 1)}-{step}")
                            raise TrainingDiverged(
                                f"loss is {loss} at epoch {epoch + 1}, {where} (lr "
                                f"{optimizer.param_groups[0]['lr']:.4g}); stopped "
                                f"{'before the update' if metrics.every == 1 else 'there'}; "
                                f"{kept}. Try a lower --lr or --warmup-epochs.")
                    optimizer.zero_grad()
                    # the images need no gradient: skip the first layer's dL/dx
                    model.backward(criterion.backward(), input_grad=False)
                    optimizer.step()
                    lr_used = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                    elapsed = partial["seconds"] + time.perf_counter() - t0
                    progress.update(step, metrics.shown, metrics.seen / max(elapsed, 1e-9))
                    if stop.requested and step < steps_per_epoch:
                        _, loss_sum, correct = metrics.read()
                        partial = {"step": step, "loss_sum": loss_sum, "seen": metrics.seen,
                                   "correct": correct, "seconds": elapsed}
                        checkpoint(epoch, partial, test_acc)
                        raise TrainingInterrupted(
                            f"interrupted at epoch {epoch + 1}, step {step}; saved "
                            f"{ckpt_path}. Continue with: nnx-train --out {out} --resume")
                    if step >= steps_per_epoch:
                        break
            finally:
                progress.close()
            be.synchronize()  # a no-op on the CPU; on the GPU the epoch's time is real
            train_seconds = partial["seconds"] + time.perf_counter() - t0
            _, loss_sum, correct = metrics.read()
            seen = metrics.seen
            if not (math.isfinite(loss_sum) and _all_finite(model)):
                raise TrainingDiverged(
                    f"the loss or the weights became NaN/inf during epoch {epoch + 1} (last "
                    f"step {step}); the checkpoint {ckpt_path} from the previous epoch is intact; "
                    "try a lower --lr")
            test_acc = float((predict(model, ds.x_test, 256, test_t) == ds.y_test).mean())
            best_acc = max(best_acc, test_acc)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                      "train_acc": int(correct) / max(seen, 1), "test_acc": test_acc,
                      "lr": lr_used,
                      "seconds": round(time.perf_counter() - t0 + partial["seconds"], 3),
                      "images_per_s": round(seen / max(train_seconds, 1e-9), 1)}
            partial = None
            # The log first, then the checkpoint: a crash between the two leaves a log line
            # for an epoch the checkpoint lacks, which --resume drops and redoes; the other
            # order would lose that epoch's line for good.
            history.append(record)
            _write_log(log_path, history)
            checkpoint(epoch + 1, None, test_acc)
            if test_acc >= best_acc:
                save(out / "best.npz", model=model, epochs_done=epoch + 1, best_acc=best_acc,
                     test_acc=test_acc, **meta)
            print(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {record['train_loss']:.4f} "
                  f"acc {record['train_acc']:.4f} | test acc {test_acc:.4f} | lr "
                  f"{record['lr']:.4g} | {record['seconds']:.1f}s, "
                  f"{record['images_per_s']:.0f} img/s", flush=True)
            if stop.requested:
                raise TrainingInterrupted(
                    f"interrupted after epoch {epoch + 1}; saved {ckpt_path}. Continue with: "
                    f"nnx-train --out {out} --resume")

    print(f"finished {cfg['epochs']} epochs: test acc {test_acc:.4f}, best {best_acc:.4f}; "
          f"saved {ckpt_path}, {out / 'best.npz'}, {log_path}", flush=True)
    if args.plot:
        plot_curves(log_path, out / "curves.png")
    return {"test_acc": test_acc, "best_acc": best_acc, "history": history, "out": str(out),
            "model": model}


def main(argv=None):
    """Console entry point.  Returns the final test accuracy when ``argv`` is given (for use
    from Python and tests) and ``None`` when run as a script, so that the exit status is 0.
    Errors exit with status 2 (data/checkpoint/usage), 3 (divergence) or 130 (Ctrl-C)."""
    from .checkpoint import CheckpointError
    from .data.errors import DataError
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = train(args)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")   # as parser.error, less the usage
    except (DataError, CheckpointError, B.BackendUnavailableError) as exc:
        print(f"nnx-train: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as exc:
        print(f"nnx-train: training diverged: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    except TrainingInterrupted as exc:
        print(f"nnx-train: {exc}", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        print("nnx-train: aborted; the last checkpoint (end of the last completed epoch, "
              "or the last saved step) is intact; continue with --resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    return result["test_acc"] if argv is not None else None


if __name__ == "__main__":
    main()
