"""The command line of ``nnx-train``: its parser, the range of every number, and how a run's
settings are resolved from the command line, the defaults and (``--resume``,
``--eval-only``) the checkpoint.

Every option that is a run setting has the parser default ``None``, so that the options the
user gave are known after parsing; :func:`resolve_settings` fills in the defaults
(:data:`DEFAULTS`, and those that depend on the data set or optimizer) afterwards.  Nothing the
user asks for is dropped without a word: an option that conflicts with the saved run, or that
does not apply to the run (``--momentum`` with Adam, ``--data`` with the digits, ...), is a
:class:`ConfigError`, which ``nnx-train`` reports as one ``nnx-train: error: ...`` line.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

#: Settings saved in the checkpoint; ``--resume`` restores them.
SETTINGS = ("model", "dataset", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
            "nesterov", "schedule", "warmup_epochs", "step_size", "gamma", "augment", "seed",
            "max_steps_per_epoch", "label_smoothing", "epochs")
#: Defaults that depend on nothing else.
DEFAULTS = {"model": "simple_cnn", "dataset": "cifar10", "optimizer": "sgd", "momentum": 0.9,
            "nesterov": False, "weight_decay": 5e-4, "schedule": "cosine",
            "warmup_epochs": 0.0, "gamma": 0.1, "seed": 0, "label_smoothing": 0.0,
            "max_steps_per_epoch": None}
DEFAULT_EPOCHS = {"cifar10": 30, "digits": 10}
DEFAULT_BATCH = {"cifar10": 128, "digits": 32}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
#: Schedules whose curve depends on the run's total length: a run using one cannot be extended.
LENGTH_BOUND_SCHEDULES = ("cosine", "onecycle")
#: What a run writes into ``--out``; a fresh run refuses to replace them without --overwrite.
RUN_FILES = ("checkpoint.npz", "best.npz", "log.jsonl", "curves.png")


class ConfigError(ValueError):
    """Inconsistent or inapplicable command-line settings."""


# ============================================================================ parser
def _checked(kind, ok, wanted: str):
    """An argparse ``type`` that parses ``kind`` and requires ``ok(value)`` (and finiteness):
    argparse then reports ``argument --lr: must be > 0, got -1``."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'an integer' if kind is int else 'a number'} is needed, got {text!r}"
            ) from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    parse.__name__ = kind.__name__   # argparse names the type in its messages
    return parse


_AT_LEAST_1 = _checked(int, lambda v: v >= 1, "at least 1")
_NON_NEGATIVE_INT = _checked(int, lambda v: v >= 0, ">= 0")
_POSITIVE = _checked(float, lambda v: v > 0, "> 0")
_NON_NEGATIVE = _checked(float, lambda v: v >= 0, ">= 0")
_MOMENTUM = _checked(float, lambda v: 0 <= v < 1, "in [0, 1)")
_FACTOR = _checked(float, lambda v: 0 < v <= 1, "in (0, 1]")
_PROBABILITY = _checked(float, lambda v: 0 <= v <= 1, "in [0, 1]")


def _default(name) -> str:
    return f" (default: {DEFAULTS[name]})"


#: What argparse must take for a (negative) number, not an option: its own pattern misses the
#: exponent form, so ``--weight-decay -1e-4`` would be "expected one argument" instead of
#: the range error.  (No option of nnx-train looks like a number.)
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line of ``nnx-train`` (every option is declared here)."""
    p = argparse.ArgumentParser(
        prog="nnx-train", description="Train an image classifier with nnx.  Writes "
        "OUT/checkpoint.npz (every epoch), OUT/best.npz (best test accuracy) and "
        "OUT/log.jsonl (one JSON line per epoch).",
        epilog="--resume continues the run in OUT with the settings saved in its "
        "checkpoint; giving a setting with another value is an error (start a new run "
        "instead).  --resume --epochs N extends a run to N epochs: exactly as if it had "
        "been planned for N epochs with --schedule none or step (--step-size is fixed when "
        "the run starts); runs with --schedule cosine or onecycle cannot be extended, since "
        "their learning-rate curve depends on the planned length.  A fresh run refuses an "
        "OUT that holds a previous run unless --overwrite is given.  Options that do not "
        "apply to the run (--momentum with adam, --step-size without --schedule step, "
        "--data with digits, ...) are errors.")
    p.add_argument("--model", choices=("simple_cnn", "resnet"), default=None,
                   help="network" + _default("model"))
    p.add_argument("--dataset", choices=("cifar10", "digits"), default=None,
                   help="cifar10 (downloaded once) or the 8x8 digits bundled with "
                        "scikit-learn" + _default("dataset"))
    p.add_argument("--data", default=None, metavar="DIR",
                   help="cifar10 only: a directory holding cifar-10-batches-py/ or the "
                        ".tar.gz archive (default: $NNX_DATA or ~/.cache/nnx)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="cifar10 only: download CIFAR-10 when it is not cached "
                        "(default: on)")
    p.add_argument("--epochs", type=_AT_LEAST_1, default=None,
                   help="epochs of the run; with --resume, a larger N extends the run "
                        "(--schedule none or step only) (default: 30 for cifar10, 10 for "
                        "digits)")
    p.add_argument("--batch-size", type=_AT_LEAST_1, default=None,
                   help="images per step (default: 128 for cifar10, 32 for digits)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                   help="optimizer" + _default("optimizer"))
    p.add_argument("--lr", type=_POSITIVE, default=None,
                   help="peak learning rate (default: 0.05 for sgd, 0.001 for adam/adamw)")
    p.add_argument("--momentum", type=_MOMENTUM, default=None,
                   help="--optimizer sgd only: momentum" + _default("momentum"))
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="--optimizer sgd only: Nesterov momentum (default: off)")
    p.add_argument("--weight-decay", type=_NON_NEGATIVE, default=None,
                   help="L2 penalty (sgd, adam) or decoupled decay (adamw)"
                        + _default("weight_decay"))
    p.add_argument("--schedule", choices=("none", "step", "cosine", "onecycle"),
                   default=None, help="learning-rate schedule, updated every step"
                                      + _default("schedule"))
    p.add_argument("--warmup-epochs", type=_NON_NEGATIVE, default=None,
                   help="linear warm-up length in epochs, may be fractional (onecycle: its "
                        "rising phase; 0 gives 30%% of the run)" + _default("warmup_epochs"))
    p.add_argument("--step-size", type=_AT_LEAST_1, default=None,
                   help="--schedule step only: epochs between decays (default: epochs // 3, "
                        "at least 1)")
    p.add_argument("--gamma", type=_FACTOR, default=None,
                   help="--schedule step only: decay factor" + _default("gamma"))
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (padding 4, or 1 for digits) and, for cifar10, "
                        "horizontal flip (default: on for cifar10, off for digits)")
    p.add_argument("--label-smoothing", type=_PROBABILITY, default=None,
                   help="cross-entropy label smoothing" + _default("label_smoothing"))
    p.add_argument("--backend", choices=("cpu", "cuda"), default=None,
                   help="compute backend; may differ on --resume (default: $NNX_BACKEND "
                        "or cpu)")
    p.add_argument("--seed", type=_NON_NEGATIVE_INT, default=None,
                   help="seed of the initialisation, shuffling and augmentation"
                        + _default("seed"))
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: runs/DATASET-MODEL)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in OUT from OUT/checkpoint.npz with its saved "
                           "settings")
    mode.add_argument("--eval-only", action="store_true",
                      help="evaluate OUT/checkpoint.npz (accuracy, per-class F1, confusion "
                           "matrix) and exit")
    mode.add_argument("--overwrite", action="store_true",
                      help="start a fresh run even if OUT holds a previous one, deleting "
                           "its checkpoint, best model, log and curves")
    p.add_argument("--plot", action="store_true", help="write OUT/curves.png (matplotlib)")
    p.add_argument("--max-steps-per-epoch", type=_AT_LEAST_1, default=None,
                   help="cut every epoch after this many steps, for quick runs "
                        "(default: no limit)")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="auto: a tqdm bar on a terminal when tqdm is installed, else lines "
                        "(default: auto)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the processes of an MPI job (launch "
                        "with mpiexec -n N; needs nnx[mpi]): --batch-size is the global "
                        "batch, split evenly; rank 0 writes the files")
    p._negative_number_matcher = _NEGATIVE_NUMBER
    return p


# ============================================================================ settings
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _spelled(name: str, value) -> str:
    """How the command line spells ``name=value``."""
    if isinstance(value, bool):
        return _flag(name) if value else "--no-" + _flag(name)[2:]
    return f"{_flag(name)} {value}"


def _given(args) -> dict:
    """The settings the user gave on the command line."""
    return {k: getattr(args, k) for k in SETTINGS if getattr(args, k, None) is not None}


def _complete(cfg: dict) -> dict:
    """Fill the defaults in (those of other options first)."""
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    cfg.setdefault("epochs", DEFAULT_EPOCHS[cfg["dataset"]])
    cfg.setdefault("batch_size", DEFAULT_BATCH[cfg["dataset"]])
    cfg.setdefault("lr", DEFAULT_LR[cfg["optimizer"]])
    cfg.setdefault("augment", cfg["dataset"] == "cifar10")
    # fixed when the run starts, so that extending a step run keeps its decay points
    cfg.setdefault("step_size", max(1, cfg["epochs"] // 3) if cfg["schedule"] == "step"
                   else None)
    return cfg


def _conflicts(given: dict, saved: dict, skip=()) -> list[str]:
    def spelled(k):
        return f"no {_flag(k)}" if saved[k] is None else _spelled(k, saved[k])
    return [f"{_spelled(k, v)} (the run has {spelled(k)})"
            for k, v in given.items() if k not in skip and k in saved and v != saved[k]]


def resolve_settings(args, saved: dict | None = None, epochs_done: int = 0) -> dict:
    """The run's settings: the command line over the defaults (fresh run), or the saved
    ones (``--resume``, ``--eval-only``), which the command line may only repeat, except
    that ``--resume --epochs N`` may extend a run.  Raises :class:`ConfigError`."""
    given = _given(args)
    if saved is None:
        cfg = _complete(given)
    else:
        cfg = _complete({k: saved.get(k) for k in SETTINGS})
        action = "--resume" if args.resume else "--eval-only"
        conflicts = _conflicts(given, cfg, skip=("epochs",) if args.resume else ())
        if conflicts:
            fix = ("a resumed run keeps its saved settings: drop these options, or start a "
                   "new run (another --out, or --overwrite)" if args.resume else
                   "--eval-only evaluates the run as it was trained: drop these options")
            raise ConfigError(f"{action}: the checkpoint's run was trained with other "
                              f"settings: {', '.join(conflicts)}; {fix}")
        if args.resume and given.get("epochs", cfg["epochs"]) != cfg["epochs"]:
            cfg["epochs"] = _extended(given["epochs"], cfg, epochs_done)
    _check_applicable(args, given, cfg)
    return cfg


def _extended(epochs: int, cfg: dict, epochs_done: int) -> int:
    planned = cfg["epochs"]
    if epochs < planned:
        raise ConfigError(f"--epochs {epochs}: the run was planned for {planned} epochs "
                          f"({epochs_done} done); a resumed run can be extended, not "
                          "shortened")
    if cfg["schedule"] in LENGTH_BOUND_SCHEDULES:
        raise ConfigError(f"--epochs {epochs}: the run's {cfg['schedule']} schedule was "
                          f"planned for {planned} epochs and its learning-rate curve depends "
                          "on that length, so it cannot be extended (only --schedule none "
                          "or step runs can); start a new run with --epochs "
                          f"{epochs} instead")
    return epochs


def _check_applicable(args, given: dict, cfg: dict) -> None:
    """Options that do not apply to the run are errors, not silently ignored."""
    problems = []
    if cfg["dataset"] != "cifar10":
        problems += [f"{opt} applies to --dataset cifar10 only (the run uses "
                     f"{cfg['dataset']}, which needs no download)"
                     for opt, value in (("--data", args.data), ("--download", args.download))
                     if value is not None]
    if cfg["optimizer"] != "sgd":
        problems += [f"{_flag(k)} applies to --optimizer sgd only (the run uses "
                     f"{cfg['optimizer']})" for k in ("momentum", "nesterov") if k in given]
    elif cfg["nesterov"] and cfg["momentum"] == 0:
        problems.append("--nesterov needs --momentum > 0")
    if cfg["schedule"] != "step":
        problems += [f"{_flag(k)} applies to --schedule step only (the run uses "
                     f"{cfg['schedule']})" for k in ("step_size", "gamma") if k in given]
    if "warmup_epochs" in given and cfg["warmup_epochs"] > cfg["epochs"]:
        problems.append(f"--warmup-epochs {cfg['warmup_epochs']} is longer than the run's "
                        f"{cfg['epochs']} epochs")
    if cfg["schedule"] == "onecycle" and cfg["warmup_epochs"] > 0.9 * cfg["epochs"]:
        problems.append(f"--warmup-epochs {cfg['warmup_epochs']}: onecycle's rising phase "
                        f"can be at most 90% of the run's {cfg['epochs']} epochs")
    if args.eval_only and args.plot:
        problems.append("--plot applies to training, not to --eval-only")
    if args.eval_only and getattr(args, "distributed", False):
        problems.append("--distributed applies to training, not to --eval-only")
    if problems:
        raise ConfigError("; ".join(problems))


def out_dir(args) -> Path:
    """``--out``, or ``runs/DATASET-MODEL``."""
    return Path(args.out or f"runs/{args.dataset or DEFAULTS['dataset']}-"
                            f"{args.model or DEFAULTS['model']}")


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` (and its parents) or raise :class:`ConfigError` saying why not."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the directory "
                          f"({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: the directory is not writable")


def previous_run_files(out: Path) -> list[str]:
    """The files of a previous run in ``out``: those a fresh run would replace.  A log
    without checkpoint or best model (a run killed in its first epoch) does not count."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    return found if {"checkpoint.npz", "best.npz"} & set(found) else []
