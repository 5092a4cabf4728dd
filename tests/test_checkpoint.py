"""nnx.save / nnx.load: one atomic .npz with arrays + JSON metadata; clear errors for bad
files; Module.state_dict round trips, including a converted PyTorch state_dict."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import nnx
from nnx.nn import Linear, ReLU, Sequential


def make_model(seed=0):
    nnx.manual_seed(seed)
    return Sequential(Linear(4, 8), ReLU(), Linear(8, 3))


def train_steps(model, opt, x, y, n):
    crit = nnx.nn.MSELoss()
    for _ in range(n):
        opt.zero_grad()
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
    return float(loss)


def test_round_trip_model_optimizer_scheduler_extra(backend, tmp_path, rng):
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.standard_normal((16, 3)).astype(np.float32)
    model = make_model()
    opt = nnx.optim.Adam(model.parameters(), lr=1e-2)
    sched = nnx.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    train_steps(model, opt, x, y, 3)
    sched.step()
    path = tmp_path / "ckpt.npz"
    assert nnx.save(path, model, opt, sched, epoch=3, history=[1.5, np.float32(0.5)],
                    note="hi", rng_state=True) == str(path)
    with np.load(path, allow_pickle=False) as npz:  # readable without nnx
        assert "model/0.weight" in npz.files and "model/2.bias" in npz.files
        assert "optim/state/0/exp_avg" in npz.files
        meta = json.loads(npz["__nnx_meta__"].tobytes())
    assert meta["format_version"] == 1 and meta["nnx_version"] == nnx.__version__

    # continue the original for 2 steps
    train_steps(model, opt, x, y, 2)
    expected = model.state_dict()

    model2 = make_model(seed=99)
    opt2 = nnx.optim.Adam(model2.parameters(), lr=1e-2)
    sched2 = nnx.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    out = nnx.load(path, model2, opt2, sched2)
    assert out["extra"] == {"epoch": 3, "history": [1.5, 0.5], "note": "hi"}
    assert set(out["model_state"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert out["optimizer_state"]["state"][0]["step"] == 3
    assert out["rng_state"]["host"]["bit_generator"] == "PCG64"
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == sched.get_last_lr()[0]
    assert isinstance(opt2.param_groups[0]["betas"], tuple)
    train_steps(model2, opt2, x, y, 2)
    # resume in the same process on the same path: the same operations, so bit-identical
    for k, v in model2.state_dict().items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    model = make_model()
    path = tmp_path / "m.ckpt"
    nnx.save(path, model)
    nnx.save(path, model, step=2)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["m.ckpt"]
    assert nnx.load(path)["extra"] == {"step": 2}
    # a failed save (non-JSON extra) leaves the old file and no temp file behind
    with pytest.raises(TypeError, match="JSON"):
        nnx.save(path, model, bad=object())
    assert sorted(os.listdir(tmp_path)) == ["m.ckpt"]
    assert nnx.load(path)["extra"] == {"step": 2}


def test_truncated_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "t.npz"
    nnx.save(path, make_model(), epoch=1)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 5):
        path.write_bytes(data[:cut])
        with pytest.raises(nnx.CheckpointError, match="t.npz") as info:
            nnx.load(path, make_model())
        assert "truncated or corrupt" in str(info.value) or "not an .npz" in str(info.value)


def test_garbage_and_missing_files(tmp_path, rng):
    path = tmp_path / "garbage.npz"
    path.write_bytes(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(nnx.CheckpointError, match="garbage.npz.*not an .npz"):
        nnx.load(path)
    with pytest.raises(nnx.CheckpointError, match="nope.npz.*does not exist"):
        nnx.load(tmp_path / "nope.npz")
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(nnx.CheckpointError, match="plain.npz.*not written by nnx.save"):
        nnx.load(plain)


def test_missing_entries_raise_checkpoint_error(tmp_path):
    path = tmp_path / "only_model.npz"
    model = make_model()
    nnx.save(path, model)
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(nnx.CheckpointError, match="only_model.npz.*no optimizer state"):
        nnx.load(path, model, opt)
    with pytest.raises(nnx.CheckpointError, match="no model state"):
        empty = tmp_path / "empty.npz"
        nnx.save(empty, epoch=0)
        nnx.load(empty, model)
    # model of another shape
    other = Sequential(Linear(4, 5), ReLU(), Linear(5, 3))
    with pytest.raises(nnx.CheckpointError, match=r"only_model.npz.*0.weight.*\(8, 4\)"):
        nnx.load(path, other)
    # an array removed from the archive
    arrays = dict(np.load(path))
    del arrays["model/2.bias"]
    np.savez(path, **arrays)
    with pytest.raises(nnx.CheckpointError, match="2.bias"):
        nnx.load(path, model)
    # optimizer of another type
    path2 = tmp_path / "sgd.npz"
    nnx.save(path2, model, opt)
    with pytest.raises(nnx.CheckpointError, match="SGD"):
        nnx.load(path2, model, nnx.optim.Adam(model.parameters()))


def test_state_dict_round_trip(backend):
    a, b = make_model(0), make_model(1)
    sd = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    b.load_state_dict(sd)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(backend.to_numpy(a(x)), backend.to_numpy(b(x)))


def test_load_state_dict_strict_errors():
    model = make_model()
    sd = model.state_dict()
    missing = dict(sd)
    del missing["2.bias"]
    with pytest.raises(KeyError, match="missing keys.*2.bias"):
        model.load_state_dict(missing)
    unexpected = dict(sd, extra_thing=np.zeros(1))
    with pytest.raises(KeyError, match="unexpected keys.*extra_thing"):
        model.load_state_dict(unexpected)
    res = model.load_state_dict(unexpected, strict=False)
    assert res["unexpected_keys"] == ["extra_thing"]
    bad = dict(sd)
    bad["0.weight"] = np.zeros((8, 5), np.float32)
    with pytest.raises(ValueError, match=r"0.weight.*\(8, 5\).*\(8, 4\)"):
        model.load_state_dict(bad)


@pytest.mark.torch
def test_load_torch_state_dict(backend, rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    tm = tm.double()
    model = make_model().double()
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((6, 4))
    with torch.no_grad():
        expected = tm(torch.tensor(x)).numpy()
    np.testing.assert_allclose(backend.to_numpy(model(x)), expected, rtol=1e-12, atol=1e-12)


def make_bn_model(seed=0):
    """With buffers (BatchNorm running statistics), which a state dict carries too."""
    nnx.manual_seed(seed)
    return Sequential(Linear(4, 8), nnx.nn.BatchNorm1d(8), ReLU(), Linear(8, 3))


@pytest.mark.parametrize("as_str", [False, True])
def test_pytorch_habit_save_state_dict_round_trip(backend, tmp_path, rng, as_str):
    """nnx.save(model.state_dict(), path); model.load_state_dict(nnx.load(path))."""
    a = make_bn_model(0).double()
    a(rng.standard_normal((16, 4)))           # training mode: running stats move off 0/1
    a.eval()
    path = tmp_path / "weights.npz"
    sd = a.state_dict()
    assert nnx.save(sd, str(path) if as_str else path) == str(path)
    loaded = nnx.load(str(path) if as_str else path)
    assert type(loaded) is type(sd) and list(loaded) == list(sd)   # same keys, same order
    assert any("running_mean" in k for k in loaded)
    for k in sd:
        assert loaded[k].dtype == sd[k].dtype
        np.testing.assert_array_equal(loaded[k], sd[k], err_msg=k)
    b = make_bn_model(1).double()
    b.load_state_dict(loaded)
    b.eval()
    x = rng.standard_normal((5, 4))
    np.testing.assert_array_equal(backend.to_numpy(b(x)), backend.to_numpy(a(x)))
    # the nnx way of loading works on the same file
    c = make_bn_model(2).double()
    out = nnx.load(path, c)
    assert out["extra"] == {} and out["optimizer_state"] is None
    c.eval()
    np.testing.assert_array_equal(backend.to_numpy(c(x)), backend.to_numpy(a(x)))


def test_wrong_save_and_load_calls_show_the_right_call(tmp_path):
    model = make_model()
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "m.npz"
    with pytest.raises(TypeError, match=r"Sequential, not a path \(the arguments are swapped\)"
                                        r".*nnx.save\(path, model.*nnx.save\(model.state_dict"
                                        r"\(\), path\)"):
        nnx.save(model, path)
    with pytest.raises(TypeError, match=r"model must be .*OrderedDict.*a state dict\? call "
                                        r"nnx.save\(state_dict, path\)"):
        nnx.save(path, model.state_dict())
    with pytest.raises(TypeError, match="path is missing"):
        nnx.save(model.state_dict())
    with pytest.raises(TypeError, match=r"state dict alone.*nnx.save\(path, model, optimizer"):
        nnx.save(model.state_dict(), path, opt)
    with pytest.raises(TypeError, match=r"state dict alone"):
        nnx.save(model.state_dict(), path, epoch=3)
    # the other PyTorch habit: one dict holding state dicts and numbers
    with pytest.raises(TypeError, match=r"'model' is of type OrderedDict, not an array.*"
                                        r"nnx.save\(path, model, optimizer, epoch=...\)"):
        nnx.save({"model": model.state_dict(), "epoch": 3}, path)
    with pytest.raises(TypeError, match="optimizer must be an object with .state_dict"):
        nnx.save(path, model, opt.state_dict())
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        nnx.save(3, model)
    with pytest.raises(TypeError, match="keys must be strings"):
        nnx.save({0: np.zeros(2)}, path)
    assert not path.exists() and os.listdir(tmp_path) == []
    nnx.save(path, model)
    with pytest.raises(TypeError, match=r"nnx.load: the first argument is a Sequential.*"
                                        r"swapped.*nnx.load\(path, model"):
        nnx.load(model, path)


@pytest.mark.torch
def test_torch_state_dict_saved_with_nnx_save(backend, tmp_path, rng):
    """A PyTorch state dict (CPU tensors) goes through nnx.save / nnx.load unchanged."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(int(rng.integers(1 << 30)))
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                             torch.nn.Linear(8, 3)).double()
    nnx.save(tm.state_dict(), tmp_path / "torch.npz")
    model = make_model().double()
    model.load_state_dict(nnx.load(tmp_path / "torch.npz"))
    x = rng.standard_normal((6, 4))
    with torch.no_grad():
        expected = tm(torch.tensor(x)).numpy()
    # the same float64 products in another library: a few ulps over a length-8 reduction
    np.testing.assert_allclose(backend.to_numpy(model(x)), expected, rtol=1e-12, atol=1e-12)
