"""The airbench94 recipe end to end: a learnable synthetic set in the CIFAR-10 archive
format, digits from the command line, and the CUDA backend (simulated unless a GPU is
present) against the CPU on the same random draws."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

import nnx
import nnx.backend as B
from layer_harness import simulated_cuda
from nnx.data import cifar10
from nnx.data.datasets import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, ImageDataset
from nnx.nn.whitening import whitening_init_
from nnx.recipes import airbench94 as R

ROWS = 160     # images per batch file: 800 training and 160 test images


def _synthetic_cifar(root, seed=0):
    """Ten classes, each a smooth mirror-symmetric colour pattern (4x4 blocks of 8x8 pixels)
    plus pixel noise, written as the official python-version batches."""
    rng = np.random.default_rng(seed)
    patterns = rng.standard_normal((10, 3, 4, 4))
    patterns = (patterns + patterns[..., ::-1]).repeat(8, axis=2).repeat(8, axis=3)
    folder = root / cifar10.FOLDER
    folder.mkdir(parents=True)
    for name in list(cifar10.TRAIN_BATCHES) + [cifar10.TEST_BATCH]:
        labels = rng.integers(0, 10, ROWS)
        images = 128 + 40 * patterns[labels] + 30 * rng.standard_normal((ROWS, 3, 32, 32))
        data = np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(ROWS, -1)
        cifar10.write_batch(folder / name, data, labels)
    return root


def test_recipe_learns_a_cifar_format_archive(tmp_path, monkeypatch):
    folder = _synthetic_cifar(tmp_path / "src") / cifar10.FOLDER
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=cifar10.FOLDER)
    monkeypatch.setenv("NNX_DATA", str(tmp_path / "cache"))     # extraction goes there
    arrays = cifar10.load_cifar10(archive, download=False, md5=None, batch_rows=ROWS)
    ds = ImageDataset("cifar10", *arrays, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD)
    cfg = R.Config(widths=(8, 16, 16), batch_size=80, epochs=5, whiten_images=400)
    res = R.run(cfg, ds, backend="cpu", seed=1, log=None)
    assert len(res["history"]) == 5 and res["history"][-1]["steps"] == 50
    # chance is 0.1; the classes are separable, so a working recipe is far above it
    assert res["test_acc"] > 0.6 and res["tta_test_acc"] > 0.6, res


def test_cli_runs_on_digits(tmp_path, capsys):
    out = tmp_path / "result.json"
    res = R.main(["--dataset", "digits", "--widths", "8,16,16", "--batch-size", "128",
                  "--epochs", "3", "--whiten-images", "500", "--json", str(out)])
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [s["epoch"] for s in lines[:-1]] == [0, 1, 2]
    assert lines[-1]["test_acc"] == res["test_acc"] and "tta_test_acc" in lines[-1]
    assert json.loads(out.read_text())["train_images"] == res["train_images"] == 1437
    assert res["tta_test_acc"] > 0.3                               # chance: 0.1


def test_cli_rejects_bad_widths():
    with pytest.raises(SystemExit, match="--widths must be three integers"):
        R.main(["--dataset", "digits", "--widths", "8,x,16"])
    with pytest.raises(SystemExit, match="three positive integers"):
        R.main(["--dataset", "digits", "--widths", "8,16"])


def _train_replaying(be, draws, record, x, y, cfg):
    """Train a float64 model on ``be``; the backend's random draws are recorded into
    ``draws`` (``record``) or replayed from it, so both backends see the same batches."""
    B.use(be.name)
    originals = {name: getattr(be, name) for name in ("random", "randint")}

    def wrap(name):
        def draw(*args, **kwargs):
            if record:
                value = originals[name](*args, **kwargs)
                draws.append(be.to_numpy(value).copy())
                return value
            return be.asarray(draws.pop(0))
        return draw
    nnx.manual_seed(4)
    model = R.build_model(cfg, dtype=np.float64)
    images = be.asarray(x)
    whitening_init_(model.whiten, images, cfg.whiten_eps)
    try:
        for name in originals:
            setattr(be, name, wrap(name))
        R.train(model, images, be.asarray(y), cfg)
    finally:
        for name, fn in originals.items():
            setattr(be, name, fn)
    return [be.to_numpy(p.data) for p in model.parameters()]


def test_cuda_recipe_matches_cpu(rng):
    x = rng.standard_normal((8, 3, 32, 32))
    y = rng.integers(0, 10, 8)
    # the simulated kernels run thread by thread on the CPU, so the run is tiny: 2 steps per
    # epoch, 5 steps, with the whitening-bias freeze and the lookahead (created at step 3,
    # updated at steps 4 and 5) moved to epoch 1
    cfg = R.Config(widths=(4, 8, 8), batch_size=4, epochs=2.5, whiten_bias_epochs=1,
                   ema_start_epochs=1, ema_every_n_steps=1)
    draws = []
    cpu = _train_replaying(B.use("cpu"), draws, True, x, y, cfg)
    with simulated_cuda() as be:
        cuda = _train_replaying(be, draws, False, x, y, cfg)
    assert not draws
    for a, b in zip(cpu, cuda):
        # float64 on both: per-step reordering differences ~1e-13 relative, amplified by
        # 5 training steps; 1e-7 (float32's roundoff) would catch any real difference
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-7 * np.abs(a).max())


def test_recipe_argument_parsing():
    from nnx.recipes import recipe_argument, run_recipe
    assert recipe_argument(["--epochs", "2", "--recipe", "airbench94", "--seed", "1"]) == (
        "airbench94", ["--epochs", "2", "--seed", "1"])
    assert recipe_argument(["--recipe=airbench94"]) == ("airbench94", [])
    assert recipe_argument(["--epochs", "2"]) == (None, ["--epochs", "2"])
    with pytest.raises(SystemExit, match="needs a name"):
        recipe_argument(["--recipe"])
    with pytest.raises(SystemExit, match="unknown recipe 'vgg'"):
        run_recipe("vgg", [])


def test_nnx_train_dispatches_to_the_recipe(capsys):
    from nnx import train
    acc = train.main(["--recipe", "airbench94", "--dataset", "digits", "--widths", "4,8,8",
                      "--batch-size", "256", "--epochs", "1", "--train-limit", "512"])
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["tta_test_acc"] == acc and last["train_images"] == 512
