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

``--distributed`` (under ``mpiexec -n N``) trains data-parallel: ``--batch-size`` is the
global batch, rank 0 alone writes the files; see :mod:`nnx.train_distributed`.  The stages
of a run are in :mod:`nnx.train_loop`, the command line in :mod:`nnx.train_options`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from . import backend as B
from .train_blocks import (TrainingDiverged, TrainingInterrupted, _all_finite,  # noqa: F401
                           _InterruptFlag, _Progress, _read_every, _StepMetrics, _write_log,
                           build_optimizer, build_scheduler, build_transforms, plot_curves,
                           read_log)
from .train_options import (LENGTH_BOUND_SCHEDULES, RUN_FILES, ConfigError,  # noqa: F401
                            build_parser, out_dir, prepare_out_dir, previous_run_files,
                            resolve_settings)


# ============================================================================ training
def _nothing_to_do(out: Path, cfg: dict, ck: dict, plot: bool, main_rank: bool) -> dict:
    """``--resume`` of a run that already finished: say so (the main rank), train
    nothing."""
    done = ck["epochs_done"]
    how = (f"pass --epochs N (N > {done}) to train further"
           if cfg["schedule"] not in LENGTH_BOUND_SCHEDULES else
           f"its {cfg['schedule']} schedule cannot be extended; start a new run with more "
           "--epochs to train longer")
    if main_rank:
        print(f"nothing to do: the run in {out} finished its {done} "
              f"epoch{'s' if done != 1 else ''} (test acc "
              f"{ck.get('test_acc', float('nan')):.4f}, best {ck['best_acc']:.4f}); {how}",
              flush=True)
    if plot and main_rank:
        plot_curves(out / "log.jsonl", out / "curves.png")
    return {"test_acc": ck.get("test_acc", float("nan")), "best_acc": ck["best_acc"],
            "history": read_log(out / "log.jsonl"), "out": str(out), "model": None}


def _read_checkpoint(args, ckpt_path):
    """The checkpoint's saved values for ``--resume``/``--eval-only`` (else None)."""
    from .checkpoint import CheckpointError, read_extra
    if not (args.resume or args.eval_only):
        return None
    if not ckpt_path.exists():
        raise CheckpointError(f"{'--resume' if args.resume else '--eval-only'}: no "
                              f"checkpoint at {ckpt_path} (set --out to the run's "
                              "directory)")
    ck = read_extra(ckpt_path)
    if args.resume and "settings" not in ck:
        raise CheckpointError(f"--resume: {ckpt_path} was not written by nnx-train (no "
                              "saved settings); it cannot be resumed")
    return ck


def _evaluate_only(args, ck: dict, ckpt_path) -> dict:
    """``--eval-only``: the report of the checkpoint's model on the test set."""
    from .evaluate import evaluate_checkpoint, format_report
    saved = {"dataset": ck.get("dataset"),
             "model": (ck.get("model_spec") or {}).get("name"), **ck.get("settings", {})}
    resolve_settings(args, saved)     # the command line may only repeat the run's settings
    if args.backend:
        B.use(args.backend)
    result, classes = evaluate_checkpoint(ckpt_path, None, args.data,
                                          download=args.download is not False)
    print(format_report(result, classes))
    return {"test_acc": result["accuracy"], "eval": result}


def train(args, world=None) -> dict:
    """Run training as configured by parsed ``args``; returns a summary dict.  ``world``:
    the run's processes (default: this one alone; see :mod:`nnx.train_loop`)."""
    from .train_loop import Trainer
    out = out_dir(args)
    ckpt_path = out / "checkpoint.npz"
    ck = _read_checkpoint(args, ckpt_path)
    if args.eval_only:
        return _evaluate_only(args, ck, ckpt_path)
    cfg = resolve_settings(args, ck["settings"] if ck else None,
                           ck["epochs_done"] if ck else 0)
    if world is not None:
        world.check_settings(cfg)
    if ck and ck["epochs_done"] >= cfg["epochs"] and not ck["partial"]:
        return _nothing_to_do(out, cfg, ck, args.plot, world is None or world.is_main)
    prepare_out_dir(out)
    previous = [] if ck else previous_run_files(out)
    if previous and not args.overwrite:
        raise ConfigError(f"--out {out} holds a previous run ({', '.join(previous)}); a "
                          "fresh run would replace these files: pass --resume to continue "
                          "it, --overwrite to start over, or choose another --out")
    if args.backend:
        B.use(args.backend)
    trainer = Trainer(args, out, cfg, ck, previous, world)
    trainer.build()
    if ck:
        trainer.resume()
    else:
        trainer.start_fresh()
    trainer.announce()
    return trainer.run()


def _outcome(exc: BaseException, prog: str):
    """``(exit status, message, expected)`` for an exception that ends ``nnx-train``;
    ``expected``: one of the errors the tool reports in one line (else a bug: traceback)."""
    from .checkpoint import CheckpointError
    from .data.errors import DataError
    from .distributed.communicator import DistributedUnavailable
    if isinstance(exc, ConfigError):
        return 2, f"{prog}: error: {exc}", True          # as parser.error, less the usage
    if isinstance(exc, (DataError, CheckpointError, B.BackendUnavailableError,
                        DistributedUnavailable)):
        return 2, f"nnx-train: {exc}", True
    if isinstance(exc, TrainingDiverged):
        return 3, f"nnx-train: training diverged: {exc}", True
    if isinstance(exc, TrainingInterrupted):
        return 130, f"nnx-train: {exc}", True
    if isinstance(exc, KeyboardInterrupt):
        return 130, ("nnx-train: aborted; the last checkpoint (end of the last completed "
                     "epoch, or the last saved step) is intact; continue with --resume"), True
    return 1, None, False


def main(argv=None):
    """Console entry point.  Returns the final test accuracy when ``argv`` is given (for use
    from Python and tests) and ``None`` when run as a script, so that the exit status is 0.
    Errors exit with status 2 (data/checkpoint/usage), 3 (divergence) or 130 (Ctrl-C).
    Under ``--distributed`` a rank that fails otherwise ends the whole job (see
    :mod:`nnx.train_distributed`)."""
    from .recipes import recipe_argument, run_recipe
    recipe, rest = recipe_argument(sys.argv[1:] if argv is None else argv)
    if recipe is not None:      # a recipe has its own loop and options (nnx/recipes/)
        result = run_recipe(recipe, rest)
        return result["tta_test_acc"] if argv is not None else None
    parser = build_parser()
    args = parser.parse_args(argv)
    world = None
    try:
        if args.distributed:
            from .train_distributed import make_world
            world = make_world(args)
            world.start(args)
        result = train(args, world)
    except (Exception, KeyboardInterrupt) as exc:
        code, message, expected = _outcome(exc, parser.prog)
        if world is not None and world.size > 1:
            from .train_distributed import describe
            line, detail = describe(exc)
            world.fail(code, message or line, collective=expected,
                       detail="" if expected else detail)
        if not expected:
            raise
        print(message, file=sys.stderr)
        raise SystemExit(code) from None
    return result["test_acc"] if argv is not None else None


if __name__ == "__main__":
    main()
