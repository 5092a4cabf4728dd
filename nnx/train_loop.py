"""One training run of ``nnx-train``, in stages: :class:`Trainer` builds the data, model,
optimizer and schedule (:meth:`~Trainer.build`), restores a checkpoint or starts fresh
(:meth:`~Trainer.resume`, :meth:`~Trainer.start_fresh`), then runs epochs
(:meth:`~Trainer.train_epoch`), each followed by the test accuracy
(:meth:`~Trainer.evaluate`) and the log line and checkpoints (:meth:`~Trainer.end_epoch`),
and finishes (:meth:`~Trainer.finish`).

The run's *world* (:class:`SingleProcess` here, :class:`nnx.distributed.trainer.TrainerWorld`
for ``--distributed``) supplies the few places where a data-parallel run differs: which rank
writes files and prints, how the batches are split, how the gradients are averaged, and how a
flag or a count is agreed on by every rank.  The command line and the checks that come before
a run are in :mod:`nnx.train`.
"""
from __future__ import annotations

import math
import time

from . import backend as B
from .train_blocks import (TrainingDiverged, TrainingInterrupted, _all_finite,
                           _InterruptFlag, _Progress, _read_every, _StepMetrics, _write_log,
                           build_optimizer, build_scheduler, build_transforms, plot_curves,
                           read_log)
from .train_options import RUN_FILES


class SingleProcess:
    """The world of an ordinary run: one process, which does everything."""

    rank, size, is_main = 0, 1, True

    def check_settings(self, cfg: dict) -> None:
        """Raises ConfigError for settings this world cannot run."""

    def prepare_model(self, model):
        return model

    def make_loader(self, dataset, batch_size, seed, transform):
        from .data.loader import DataLoader
        return DataLoader(dataset, batch_size, shuffle=True, drop_last=False, seed=seed,
                          transform=transform)

    def after_restore(self, seed: int, position: int) -> None:
        """Called after a checkpoint's state (RNG included) was restored."""

    def average_gradients(self, model) -> None:
        """Called after the backward pass, before the optimizer step."""

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank."""
        return bool(flag)

    def sums(self, values):
        """Element-wise sums over the ranks of a few numbers (as floats)."""
        return [float(v) for v in values]

    def test_shard(self, n: int) -> slice:
        """The part of the test set this rank evaluates."""
        return slice(0, n)


class Trainer:
    """The state of one training run; see the module docstring for its stages."""

    def __init__(self, args, out, cfg: dict, ck: dict | None, previous: list, world=None):
        self.args, self.out, self.cfg, self.ck, self.previous = args, out, cfg, ck, previous
        self.world = world or SingleProcess()
        self.ckpt_path = out / "checkpoint.npz"
        self.log_path = out / "log.jsonl"
        self.start_epoch, self.best_acc, self.partial, self.history = 0, 0.0, None, []

    def say(self, text: str) -> None:
        """Progress for the user: printed by the main rank only."""
        if self.world.is_main:
            print(text, flush=True)

    # ------------------------------------------------------------------ set-up
    def build(self) -> None:
        """Data set, model, transforms, loader, optimizer, schedule and loss."""
        import nnx
        from . import models
        from .data.datasets import get_dataset
        from .nn import CrossEntropyLoss
        cfg, args = self.cfg, self.args
        self.be = B.get()
        self.ds = ds = get_dataset(cfg["dataset"], args.data,
                                   download=args.download is not False)
        nnx.manual_seed(cfg["seed"])
        self.model_kwargs = {"in_channels": ds.in_channels, "num_classes": ds.num_classes,
                             "image_size": ds.image_size}
        self.model = self.world.prepare_model(models.get(cfg["model"], **self.model_kwargs))
        train_t, self.test_t = build_transforms(ds, cfg["augment"])
        self.loader = self.world.make_loader((ds.x_train, ds.y_train), cfg["batch_size"],
                                             cfg["seed"], train_t)
        self.steps_per_epoch = len(self.loader)
        if cfg["max_steps_per_epoch"]:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg["max_steps_per_epoch"])
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.criterion = CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
        self.meta = {"model_spec": {"name": cfg["model"], "kwargs": self.model_kwargs},
                     "dataset": cfg["dataset"], "classes": list(ds.classes),
                     "normalize": {"mean": list(ds.mean), "std": list(ds.std)},
                     "settings": cfg}

    def resume(self) -> None:
        """Restore model, optimizer, schedule, loader position and RNG from the checkpoint;
        keep the log lines of the epochs the checkpoint has."""
        from .checkpoint import load
        ck, cfg = self.ck, self.cfg
        scheduler = self.scheduler
        fixed = {k: getattr(scheduler, k) for k in ("total_steps",) if hasattr(scheduler, k)}
        state = load(self.ckpt_path, model=self.model, optimizer=self.optimizer,
                     restore_rng=True)
        scheduler.load_state_dict(state["scheduler_state"])
        scheduler.__dict__.update(fixed)   # a longer run (--epochs raised) keeps its length
        self.loader.load_state_dict(ck["loader"])
        self.start_epoch, self.best_acc, self.partial = (ck["epochs_done"], ck["best_acc"],
                                                         ck["partial"])
        position = self.partial["step"] if self.partial else 0
        if "backend" not in (state["rng_state"] or {}):
            # This backend cannot save its generator (e.g. CuPy): re-seed it from the
            # position instead of replaying epoch 1's augmentation (not bit-exact).
            self.be.manual_seed(cfg["seed"] * 1_000_003 + self.start_epoch * 10_007 + position)
        self.world.after_restore(cfg["seed"], self.start_epoch * 10_007 + position)
        self.history = [r for r in read_log(self.log_path) if r["epoch"] <= self.start_epoch]
        if self.world.is_main:
            _write_log(self.log_path, self.history)  # drop lines of epochs the checkpoint lacks
        where = (f"epoch {self.start_epoch + 1}, step {self.partial['step'] + 1}"
                 if self.partial else f"epoch {self.start_epoch + 1}")
        self.say(f"resuming {self.ckpt_path} at {where}")

    def start_fresh(self) -> None:
        """Remove the files of a previous run (``--overwrite``) or of a run killed early."""
        if not self.world.is_main:
            return
        if self.previous:
            self.say(f"--overwrite: deleting the previous run in {self.out} "
                     f"({', '.join(self.previous)})")
        for name in RUN_FILES:   # a log without checkpoint: a run killed in its first epoch
            (self.out / name).unlink(missing_ok=True)

    def announce(self) -> None:
        cfg, ds = self.cfg, self.ds
        epochs = cfg["epochs"]
        ranks = f" over {self.world.size} processes" if self.world.size > 1 else ""
        self.say(f"{cfg['model']} ({self.model.num_parameters():,} parameters) on {ds.name} "
                 f"({len(ds.x_train)} train / {len(ds.x_test)} test images), backend "
                 f"{self.be.name}{ranks}, {epochs} epoch{'s' if epochs != 1 else ''} of "
                 f"{self.steps_per_epoch} steps, batch {cfg['batch_size']}, "
                 f"{cfg['optimizer']} lr {cfg['lr']}, schedule {cfg['schedule']}")
        self.say(f"writing {self.ckpt_path} (every epoch), {self.out / 'best.npz'} (best test "
                 f"accuracy) and the log {self.log_path}")

    # ------------------------------------------------------------------ files
    def checkpoint(self, epochs_done: int, partial_state, test_acc: float) -> None:
        """Write ``checkpoint.npz`` (main rank only: the ranks hold the same state)."""
        from .checkpoint import save
        if not self.world.is_main:
            return
        save(self.ckpt_path, model=self.model, optimizer=self.optimizer,
             scheduler=self.scheduler, rng_state=True, epochs_done=epochs_done,
             partial=partial_state, best_acc=self.best_acc, test_acc=test_acc,
             loader=self.loader.state_dict(), **self.meta)

    # ------------------------------------------------------------------ epochs
    def run(self) -> dict:
        """Train the remaining epochs; returns the run's summary."""
        test_acc = self.history[-1]["test_acc"] if self.history else float("nan")
        with _InterruptFlag() as stop:
            for epoch in range(self.start_epoch, self.cfg["epochs"]):
                stats = self.train_epoch(epoch, stop, test_acc)
                test_acc = self.evaluate()
                self.end_epoch(epoch, stats, test_acc)
                if stop.requested:
                    raise TrainingInterrupted(
                        f"interrupted after epoch {epoch + 1}; saved {self.ckpt_path}. "
                        f"Continue with: nnx-train --out {self.out} --resume")
        return self.finish(test_acc)

    def _diverged(self, loss, epoch, step, every) -> TrainingDiverged:
        kept = (f"the last checkpoint {self.ckpt_path} is intact"
                if self.ckpt_path.exists() else "no checkpoint was written yet")
        where = (f"step {step}" if every == 1 else
                 f"one of steps {max(1, step - every + 1)}-{step}")
        return TrainingDiverged(
            f"loss is {loss} at epoch {epoch + 1}, {where} (lr "
            f"{self.optimizer.param_groups[0]['lr']:.4g}); stopped "
            f"{'before the update' if every == 1 else 'there'}; "
            f"{kept}. Try a lower --lr or --warmup-epochs.")

    def train_epoch(self, epoch: int, stop, test_acc: float) -> dict:
        """One epoch (or the rest of an interrupted one); returns its statistics."""
        model, optimizer, world = self.model, self.optimizer, self.world
        if self.partial is None:
            self.loader.set_epoch(epoch)
            self.partial = {"step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0,
                            "seconds": 0.0}
        partial = self.partial
        model.train()
        progress = _Progress(self.args.progress if world.is_main else "none",
                             self.steps_per_epoch, epoch + 1, self.cfg["epochs"])
        t0 = time.perf_counter()
        step = partial["step"]
        # a resumed epoch's sums so far are the whole run's: rank 0 carries them
        carried = partial if world.is_main else {"loss_sum": 0.0, "correct": 0, "seen": 0}
        metrics = _StepMetrics(carried["loss_sum"], carried["correct"], carried["seen"],
                               _read_every(self.be))
        lr_used = optimizer.param_groups[0]["lr"]
        try:
            for xb, yb in self.loader:
                step += 1
                logits = model(xb)
                metrics.add(self.criterion(logits, yb), logits, yb)
                if metrics.due():
                    loss, total, _ = metrics.read()
                    if world.any(not math.isfinite(total)):
                        if not math.isfinite(total):
                            self.criterion.check_labels()  # a bad label on the GPU: name it
                        raise self._diverged(loss, epoch, step, metrics.every)
                optimizer.zero_grad()
                # the images need no gradient: skip the first layer's dL/dx
                model.backward(self.criterion.backward(), input_grad=False)
                world.average_gradients(model)
                optimizer.step()
                lr_used = optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                elapsed = partial["seconds"] + time.perf_counter() - t0
                progress.update(step, metrics.shown, metrics.seen / max(elapsed, 1e-9))
                if world.any(stop.requested) and step < self.steps_per_epoch:
                    loss_sum, correct, seen = self._epoch_sums(metrics)
                    self.partial = {"step": step, "loss_sum": loss_sum, "seen": seen,
                                    "correct": correct, "seconds": elapsed}
                    self.checkpoint(epoch, self.partial, test_acc)
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1}, step {step}; saved "
                        f"{self.ckpt_path}. Continue with: nnx-train --out {self.out} "
                        "--resume")
                if step >= self.steps_per_epoch:
                    break
        finally:
            progress.close()
        self.be.synchronize()  # a no-op on the CPU; on the GPU the epoch's time is real
        loss_sum, correct, seen = self._epoch_sums(metrics)
        if world.any(not (math.isfinite(loss_sum) and _all_finite(model))):
            raise TrainingDiverged(
                f"the loss or the weights became NaN/inf during epoch {epoch + 1} (last "
                f"step {step}); the checkpoint {self.ckpt_path} from the previous epoch is "
                "intact; try a lower --lr")
        return {"t0": t0, "loss_sum": loss_sum, "correct": correct, "seen": seen,
                "lr": lr_used, "train_seconds": partial["seconds"] + time.perf_counter() - t0}

    def _epoch_sums(self, metrics):
        """``(loss sum, correct, seen)`` of the epoch so far, over all ranks."""
        _, loss_sum, correct = metrics.read()
        if self.world.size == 1:
            return loss_sum, correct, metrics.seen
        loss_sum, correct, seen = self.world.sums([loss_sum, correct, metrics.seen])
        return loss_sum, int(correct), int(seen)

    def evaluate(self) -> float:
        """Test accuracy (each rank predicts its share; the correct counts are summed)."""
        from .evaluate import predict
        part = self.world.test_shard(len(self.ds.x_test))
        pred = predict(self.model, self.ds.x_test[part], 256, self.test_t)
        correct, = self.world.sums([int((pred == self.ds.y_test[part]).sum())])
        return float(correct / len(self.ds.x_test))

    def end_epoch(self, epoch: int, stats: dict, test_acc: float) -> None:
        """The epoch's log line, checkpoint, best model and summary line."""
        from .checkpoint import save
        seen = stats["seen"]
        self.best_acc = max(self.best_acc, test_acc)
        record = {"epoch": epoch + 1, "train_loss": stats["loss_sum"] / max(seen, 1),
                  "train_acc": int(stats["correct"]) / max(seen, 1), "test_acc": test_acc,
                  "lr": stats["lr"],
                  "seconds": round(time.perf_counter() - stats["t0"]
                                   + self.partial["seconds"], 3),
                  "images_per_s": round(seen / max(stats["train_seconds"], 1e-9), 1)}
        self.partial = None
        # The log first, then the checkpoint: a crash between the two leaves a log line
        # for an epoch the checkpoint lacks, which --resume drops and redoes; the other
        # order would lose that epoch's line for good.
        self.history.append(record)
        if self.world.is_main:
            _write_log(self.log_path, self.history)
        self.checkpoint(epoch + 1, None, test_acc)
        if test_acc >= self.best_acc and self.world.is_main:
            save(self.out / "best.npz", model=self.model, epochs_done=epoch + 1,
                 best_acc=self.best_acc, test_acc=test_acc, **self.meta)
        self.say(f"epoch {epoch + 1}/{self.cfg['epochs']}: train loss "
                 f"{record['train_loss']:.4f} acc {record['train_acc']:.4f} | test acc "
                 f"{test_acc:.4f} | lr {record['lr']:.4g} | {record['seconds']:.1f}s, "
                 f"{record['images_per_s']:.0f} img/s")

    def finish(self, test_acc: float) -> dict:
        epochs = self.cfg["epochs"]
        self.say(f"finished {epochs} epoch{'s' if epochs != 1 else ''}: test acc "
                 f"{test_acc:.4f}, best {self.best_acc:.4f}; saved {self.ckpt_path}, "
                 f"{self.out / 'best.npz'}, {self.log_path}")
        if self.args.plot and self.world.is_main:
            plot_curves(self.log_path, self.out / "curves.png")
        return {"test_acc": test_acc, "best_acc": self.best_acc, "history": self.history,
                "out": str(self.out), "model": self.model}
