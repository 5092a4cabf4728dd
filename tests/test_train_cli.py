"""``nnx-train`` / ``nnx-eval`` do not ignore what they are told: conflicting or inapplicable
options, bad numbers and bad output directories are one ``nnx-train: error: ...`` line (exit
status 2); a fresh run does not replace a previous one unless asked; resuming a finished run
says so; extending a run is exact for the step schedule and refused for cosine; every run says
where it writes; ``--help`` states each default once."""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import types

import numpy as np
import pytest

pytest.importorskip("sklearn")

import nnx  # noqa: E402
from nnx import evaluate, train, train_options  # noqa: E402
from test_train import _cpu  # noqa: E402,F401  (autouse: the CPU backend for every test)

QUICK = ["--dataset", "digits", "--progress", "none", "--max-steps-per-epoch", "2"]


def _main(*argv):
    return train.main([str(a) for a in argv])


def _error(capsys, *argv, prog=train) -> str:
    """Run, expect exit status 2 and exactly one ``PROG: error: ...`` line; return it."""
    with pytest.raises(SystemExit) as e:
        prog.main([str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    name = "nnx-train" if prog is train else "nnx-eval"
    lines = [line for line in err.splitlines() if line.startswith(f"{name}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch digits run (sgd, cosine); tests must leave it unchanged."""
    previous = nnx.backend.get()
    nnx.backend.use("cpu")
    out = tmp_path_factory.mktemp("finished")
    try:
        train.main(["--out", str(out), *QUICK, "--epochs", "1"])
    finally:
        nnx.backend.use(previous.name)
    return out


# ------------------------------------------------------------------ item 6: conflicts
@pytest.mark.parametrize("option, saved", [
    (["--optimizer", "adam"], "--optimizer sgd"), (["--lr", "0.1"], "--lr 0.05"),
    (["--batch-size", "8"], "--batch-size 32"), (["--model", "resnet"], "--model simple_cnn"),
    (["--augment"], "--no-augment"), (["--seed", "7"], "--seed 0"),
    (["--max-steps-per-epoch", "3"], "--max-steps-per-epoch 2")])
def test_resume_with_another_setting_is_an_error(finished, capsys, option, saved):
    before = _digests(finished)
    line = _error(capsys, "--out", finished, "--resume", *option)
    assert f"{' '.join(option)} (the run has {saved})" in line and "--resume" in line
    assert _digests(finished) == before


def test_resume_may_repeat_the_saved_settings(finished, capsys):
    before = _digests(finished)
    acc = _main("--out", finished, "--resume", *QUICK, "--lr", 0.05, "--model", "simple_cnn",
                "--epochs", 1)
    assert acc == _log(finished)[-1]["test_acc"]
    assert "nothing to do" in capsys.readouterr().out
    assert _digests(finished) == before


def test_eval_only_on_another_dataset_names_the_mismatch(finished, capsys):
    line = _error(capsys, "--out", finished, "--eval-only", "--dataset", "cifar10")
    assert "--dataset cifar10 (the run has --dataset digits)" in line
    line = _error(capsys, "--out", finished, "--eval-only", "--plot")
    assert "--plot" in line


def test_nnx_eval_on_a_data_set_the_model_does_not_fit(finished, capsys, monkeypatch):
    # a stand-in for CIFAR-10 (no download in tests): 3x32x32 images, 10 classes
    fake = types.SimpleNamespace(name="cifar10", in_channels=3, image_size=32, num_classes=10)
    monkeypatch.setattr("nnx.data.datasets.get_dataset", lambda *a, **k: fake)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--checkpoint", str(finished / "checkpoint.npz"), "--dataset",
                       "cifar10"])
    assert e.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("nnx-eval: ") and "trained on digits" in line
    assert "in_channels 1 (the data set has 3)" in line and "image_size 8" in line


@pytest.mark.parametrize("options, named", [
    (["--data", "DIR"], "--data applies to --dataset cifar10 only"),
    (["--no-download"], "--download applies to --dataset cifar10 only"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd"),
    (["--optimizer", "adamw", "--nesterov"], "--nesterov applies to --optimizer sgd"),
    (["--nesterov", "--momentum", "0"], "--nesterov needs --momentum > 0"),
    (["--schedule", "cosine", "--step-size", "2"], "--step-size applies to --schedule step"),
    (["--gamma", "0.5"], "--gamma applies to --schedule step only (the run uses cosine)"),
    (["--epochs", "2", "--warmup-epochs", "3"], "--warmup-epochs 3.0 is longer than"),
    (["--epochs", "2", "--schedule", "onecycle", "--warmup-epochs", "1.9"], "at most 90%")])
def test_options_that_do_not_apply_are_errors(tmp_path, capsys, options, named):
    options = [str(tmp_path) if o == "DIR" else o for o in options]
    line = _error(capsys, "--out", tmp_path / "run", *QUICK, *options)
    assert named in line
    assert not (tmp_path / "run").exists()   # refused before anything was written


def test_resume_with_an_inapplicable_option_is_an_error(finished, capsys):
    line = _error(capsys, "--out", finished, "--resume", "--step-size", "2")
    assert "--step-size 2 (the run has no --step-size)" in line


# ------------------------------------------------------------------ item 7: ranges, --out
@pytest.mark.parametrize("option, value", [
    ("--lr", "-1"), ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"),
    ("--label-smoothing", "1.5"), ("--label-smoothing", "-0.1"), ("--epochs", "0"),
    ("--epochs", "two"), ("--batch-size", "-3"), ("--momentum", "1"),
    ("--weight-decay", "-0.001"), ("--weight-decay", "-1e-4"), ("--lr", "-1E-3"),
    ("--lr", "-.5"), ("--warmup-epochs", "-1"), ("--step-size", "0"),
    ("--gamma", "0"), ("--gamma", "2"), ("--seed", "-1"), ("--max-steps-per-epoch", "0")])
def test_numbers_out_of_range_are_one_error_line(tmp_path, capsys, option, value):
    line = _error(capsys, "--out", tmp_path, "--dataset", "digits", option, value)
    assert line.startswith(f"nnx-train: error: argument {option}: ")
    assert value in line and ("must be" in line or "is needed" in line)


def test_negative_numbers_in_exponent_form_are_values_not_options():
    # argparse's own pattern takes "-1e-4" for an option ("expected one argument"); the
    # range errors above show the CLI reads them as numbers
    for text in ("-1e-4", "-1E+2", "-.5", "-3."):
        assert train_options._NEGATIVE_NUMBER.match(text), text
    for text in ("-e", "--epochs", "-1e", "-x1"):
        assert not train_options._NEGATIVE_NUMBER.match(text), text


def test_one_epoch_is_singular(tmp_path, capsys):
    _main("--out", tmp_path, *QUICK, "--epochs", "1")
    out = capsys.readouterr().out
    assert ", 1 epoch of 2 steps" in out and "finished 1 epoch:" in out
    assert "1 epochs" not in out
    _main("--out", tmp_path, *QUICK, "--epochs", "1", "--resume")
    assert "finished its 1 epoch (" in capsys.readouterr().out


def test_every_numeric_option_has_a_range():
    for parser in (train.build_parser(), evaluate.build_parser()):
        for action in parser._actions:
            assert action.type not in (int, float), f"{action.option_strings} unchecked"


def test_bad_output_directories_are_one_error_line(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    assert "--out" in _error(capsys, "--out", a_file, *QUICK) and "is a file" in \
        _error(capsys, "--out", a_file, *QUICK)
    line = _error(capsys, "--out", a_file / "run", *QUICK)
    assert "cannot create the directory" in line
    if sys.platform.startswith("linux"):   # nothing, not even root, creates files in /proc
        line = _error(capsys, "--out", "/proc/nnx-no-such-dir/run", *QUICK)
        assert "cannot create the directory" in line
    assert a_file.read_text() == "not a directory"


def test_nnx_eval_checks_its_numbers(finished, capsys):
    line = _error(capsys, "--checkpoint", finished / "checkpoint.npz", "--batch-size", "0",
                  prog=evaluate)
    assert "argument --batch-size: must be at least 1" in line


# ------------------------------------------------------------------ item 8: previous run
def test_fresh_run_refuses_to_replace_a_previous_run(finished, capsys):
    before = _digests(finished)
    line = _error(capsys, "--out", finished, *QUICK, "--epochs", 1)
    assert "checkpoint.npz, best.npz, log.jsonl" in line
    assert "--resume" in line and "--overwrite" in line
    assert _digests(finished) == before


def test_overwrite_replaces_the_previous_run(tmp_path, capsys):
    _main("--out", tmp_path, *QUICK, "--epochs", 1)
    (tmp_path / "curves.png").write_bytes(b"a plot")   # as --plot leaves (without matplotlib)
    capsys.readouterr()
    _main("--out", tmp_path, *QUICK, "--epochs", 1, "--seed", 5, "--overwrite")
    printed = capsys.readouterr().out
    assert "deleting the previous run" in printed and "curves.png" in printed
    assert not (tmp_path / "curves.png").exists() and len(_log(tmp_path)) == 1
    assert nnx.load(tmp_path / "checkpoint.npz")["extra"]["settings"]["seed"] == 5
    line = _error(capsys, "--out", tmp_path, "--resume", "--overwrite")
    assert "not allowed with" in line


def test_a_log_without_checkpoint_is_not_a_previous_run(tmp_path):
    # a run killed during its first epoch leaves at most a log: a fresh run replaces it
    (tmp_path / "log.jsonl").write_text('{"epoch": 1}\n')
    _main("--out", tmp_path, *QUICK, "--epochs", 1, "--seed", 2)
    assert len(_log(tmp_path)) == 1 and "train_loss" in _log(tmp_path)[0]


# ------------------------------------------------------------------ item 9: finish, extend
def test_resuming_a_finished_run_says_so(finished, capsys):
    before = _digests(finished)
    assert _main("--out", finished, "--resume") == _log(finished)[-1]["test_acc"]
    out = capsys.readouterr().out
    assert f"nothing to do: the run in {finished} finished its 1 epoch (test acc" in out
    assert "cosine schedule cannot be extended" in out and "resuming" not in out
    assert _digests(finished) == before


def test_a_cosine_or_onecycle_run_cannot_be_extended(finished, capsys):
    line = _error(capsys, "--out", finished, "--resume", "--epochs", 3)
    assert "--epochs 3" in line and "cosine" in line and "cannot be extended" in line
    args = train.build_parser().parse_args(["--resume", "--epochs", "4"])
    saved = train_options.resolve_settings(
        train.build_parser().parse_args(["--schedule", "onecycle", "--epochs", "2"]))
    with pytest.raises(train_options.ConfigError, match="onecycle .* cannot be extended"):
        train_options.resolve_settings(args, saved, 2)


def test_extending_a_step_run_matches_a_longer_run(tmp_path, capsys):
    """--step-size is fixed (epochs // 3 = 1) when the 3-epoch run starts, so extending it to
    6 epochs equals a 6-epoch run with --step-size 1, not a 6-epoch run's default 2 (same
    ops, same order: bit-identical)."""
    opts = [*QUICK, "--schedule", "step", "--gamma", 0.5]
    cut, ref = tmp_path / "cut", tmp_path / "ref"
    _main("--out", cut, *opts, "--epochs", 3)
    assert nnx.load(cut / "checkpoint.npz")["extra"]["settings"]["step_size"] == 1
    capsys.readouterr()
    _main("--out", cut, "--resume")
    assert "pass --epochs N (N > 3) to train further" in capsys.readouterr().out
    _main("--out", cut, "--resume", "--epochs", 6)
    printed = capsys.readouterr().out
    assert f"resuming {cut / 'checkpoint.npz'} at epoch 4" in printed
    _main("--out", ref, *opts, "--epochs", 6, "--step-size", 1)
    assert [r["lr"] for r in _log(cut)] == [r["lr"] for r in _log(ref)] == \
        [0.05 * 0.5 ** k for k in range(6)]   # exact: halving rounds nothing
    with np.load(cut / "checkpoint.npz") as a, np.load(ref / "checkpoint.npz") as b:
        keys = sorted(k for k in a.files if k.startswith(("model/", "optim/")))
        assert keys and keys == sorted(k for k in b.files if k.startswith(("model/", "optim/")))
        for k in keys:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # item 10: fresh and resumed runs say where they write, at the start and at the end
    for run, printed in ((cut, printed), (ref, capsys.readouterr().out)):
        assert (f"writing {run / 'checkpoint.npz'} (every epoch), {run / 'best.npz'} (best "
                f"test accuracy) and the log {run / 'log.jsonl'}") in printed
        assert (f"finished 6 epochs: test acc {_log(run)[-1]['test_acc']:.4f}" in printed
                and f"saved {run / 'checkpoint.npz'}, {run / 'best.npz'}" in printed)


# ------------------------------------------------------------------ item 10: --help
def _help_entries(prog, monkeypatch, capsys) -> dict[str, str]:
    """``--help`` output as {first option string: its whole entry, whitespace collapsed}."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        prog.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out.split("options:\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"  (-[-\w]+)", line)
        if m:
            key = m.group(1)
            entries[key] = line
        else:
            entries[key] += " " + line
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.mark.parametrize("prog", [train, evaluate], ids=["nnx-train", "nnx-eval"])
def test_help_states_each_default_once_and_explains_every_option(prog, monkeypatch, capsys):
    entries = _help_entries(prog, monkeypatch, capsys)
    parser = prog.build_parser()
    options = [a for a in parser._actions if a.option_strings]
    assert sorted(entries) == sorted(a.option_strings[0] for a in options)
    for action in options:
        entry = entries[action.option_strings[0]]
        names = r"(\s*(-[-\w]+)( [\w{},]+)?,?)+"
        explanation = re.sub("^" + names, "", entry).strip()
        assert len(explanation) > 10, f"{entry!r}: no help text"
        assert entry.count("default") <= 1, f"{entry!r}: default stated twice"
        takes_value = action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction)
        if takes_value and not action.required:
            assert entry.count("(default: ") == 1, f"{entry!r}: no default"
    if prog is train:   # the stated defaults are the ones the run gets
        for name, value in train_options.DEFAULTS.items():
            shown = ("on" if value else "off") if isinstance(value, bool) else value
            if value is not None:
                assert f"(default: {shown})" in entries["--" + name.replace("_", "-")]
