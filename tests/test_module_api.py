"""Module API with PyTorch's semantics: tied weights listed once, assignment rules,
apply / requires_grad_ / get_submodule / buffers / named_modules, forward hooks, and the
ModuleList / ModuleDict containers (torch is the oracle where it is importable)."""
import numpy as np
import pytest

import nnx
from nnx import nn
from nnx.nn import functional as F


def _tied_pair(torch_nn):
    """``Sequential(a, ReLU, b)`` with ``b.weight = a.weight`` (square, so they can tie)."""
    m = torch_nn.Sequential(torch_nn.Linear(4, 4), torch_nn.ReLU(), torch_nn.Linear(4, 4))
    m[2].weight = m[0].weight
    return m


# ------------------------------------------------------------------ tied weights (trap 2)
def test_tied_weight_listed_once_and_stepped_once(rng):
    m = _tied_pair(nn)
    w = m[0].weight
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.bias"]            # first name wins
    assert sum(p is w for p in m.parameters()) == 1
    assert m.num_parameters() == 16 + 4 + 4
    x = rng.standard_normal((5, 4))
    m.double()
    y = m(x)
    dy = rng.standard_normal(y.shape)
    m.backward(dy)
    # both uses accumulate into the one Parameter: dL/dW = dy2ᵀ·h + dy1ᵀ·x, checked
    # against the finite-difference gradcheck of the whole model
    nnx.gradcheck(m, (x,))
    before = w.data.copy()
    grad = w.grad.copy()
    nnx.optim.SGD(m.parameters(), lr=0.1).step()
    np.testing.assert_allclose(w.data, before - 0.1 * grad, rtol=0, atol=1e-15)


def test_tied_weights_match_torch(rng):
    torch = pytest.importorskip("torch")
    ours, theirs = _tied_pair(nn).double(), _tied_pair(torch.nn).double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert [n for n, _ in ours.named_parameters()] == \
        [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())   # both keys kept
    x = rng.standard_normal((3, 4))
    y = ours(x)
    ours.backward(np.ones_like(y))
    theirs(torch.tensor(x)).sum().backward()
    np.testing.assert_allclose(ours[0].weight.grad, theirs[0].weight.grad.numpy(),
                               rtol=1e-12, atol=1e-12)        # 4-term sums in float64


def test_shared_module_listed_once_but_state_dict_keeps_both_names():
    torch = pytest.importorskip("torch")
    for lib in (nn, torch.nn):
        shared = lib.Linear(2, 2)
        lib_m = lib.Sequential(shared, lib.Tanh(), shared)
        assert [n for n, _ in lib_m.named_modules()] == ["", "0", "1"]
        assert len(list(lib_m.parameters())) == 2
        assert len(list(lib_m.named_modules(remove_duplicate=False))) == 4
    assert list(nn.Sequential(shared := nn.Linear(2, 2), shared).state_dict()) == \
        ["0.weight", "0.bias", "1.weight", "1.bias"]


# ------------------------------------------------------------------ assignment (trap 4)
def test_assigning_array_to_parameter_raises_like_torch():
    torch = pytest.importorskip("torch")
    lin = nn.Linear(3, 2)
    with pytest.raises(TypeError) as ours:
        lin.weight = np.zeros((2, 3))
    with pytest.raises(TypeError) as theirs:
        torch.nn.Linear(3, 2).weight = np.zeros((2, 3))
    assert str(theirs.value).startswith("cannot assign 'numpy.ndarray' as parameter 'weight'")
    assert str(ours.value).startswith("cannot assign 'numpy.ndarray' as parameter 'weight'")
    assert "nnx.nn.Parameter(" in str(ours.value)
    assert isinstance(lin.weight, nn.Parameter) and "weight" in lin.state_dict()
    seq = nn.Sequential(nn.ReLU())
    with pytest.raises(TypeError, match="cannot assign 'int' as child module '0'"):
        setattr(seq, "0", 3)
    with pytest.raises(TypeError, match="int is not a Module subclass"):
        seq.add_module("1", 3)
    assert len(seq) == 1


def test_assigning_none_or_parameter_to_parameter_slot():
    torch = pytest.importorskip("torch")
    ours, theirs = nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ours.bias, theirs.bias = None, None
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    assert [n for n, _ in ours.named_parameters()] == ["weight"]
    with pytest.raises(TypeError):                 # the slot stays a parameter slot
        ours.bias = np.zeros(2)
    ours.weight = nn.Parameter(np.ones((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(ours(np.ones((1, 3), dtype=np.float32)), [[3.0, 3.0]])


# ------------------------------------------------------------------ traversal helpers
def _net():
    inner = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    return nn.Sequential(inner, nn.ReLU(), nn.Linear(4, 2))


def test_apply_get_submodule_buffers_match_torch():
    torch = pytest.importorskip("torch")
    ours = _net()
    theirs = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(3, 4),
                                                     torch.nn.BatchNorm1d(4)),
                                 torch.nn.ReLU(), torch.nn.Linear(4, 2))
    visited, tvisited = [], []
    assert ours.apply(lambda m: visited.append(type(m).__name__)) is ours
    theirs.apply(lambda m: tvisited.append(type(m).__name__))
    assert visited == tvisited                     # children first, then the module
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert len(list(ours.buffers())) == 3
    assert ours.get_submodule("0.1") is ours[0][1] and ours.get_submodule("") is ours
    assert [n for n, _ in ours.named_parameters(recurse=False)] == []
    with pytest.raises(AttributeError, match="has no attribute `9`"):
        ours.get_submodule("0.9")


def test_requires_grad_freezes_parameters(rng):
    m = _net()
    m[0].requires_grad_(False)
    assert [p.requires_grad for p in m.parameters()] == [False] * 4 + [True] * 2
    frozen = [p.data.copy() for p in m[0].parameters()]
    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = m(x)
    m.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert all(p.grad is None for p in m[0].parameters())
    assert all(p.grad is not None for p in m[2].parameters())
    nnx.optim.Adam(m.parameters(), lr=0.1).step()
    for p, before in zip(m[0].parameters(), frozen):
        np.testing.assert_array_equal(p.data, before)
    assert m.requires_grad_() is m and all(p.requires_grad for p in m.parameters())


# ------------------------------------------------------------------ hooks
def test_forward_hooks_observe_replace_and_remove(rng):
    m = _net()
    m.eval()
    seen = []
    h1 = m[2].register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    h2 = m[1].register_forward_pre_hook(lambda mod, args: (2 * args[0],))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = m(x)
    assert seen == [(5, 2)]
    h2.remove()
    with nnx.no_grad():
        y_plain = m(x)
    h1.remove()
    m(x)
    assert seen == [(5, 2), (5, 2)]                # removed: not called again
    h = m[0](x)
    # ReLU(2h)·W + b with the doubled input, versus ReLU(h)·W + b
    w, b = m[2].weight.data, m[2].bias.data
    np.testing.assert_allclose(y, np.maximum(2 * h, 0) @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_plain, np.maximum(h, 0) @ w.T + b, rtol=1e-5, atol=1e-5)


def test_forward_hook_replacing_a_composite_output_is_differentiated(rng):
    m = nn.Sequential(nn.Linear(3, 2)).double()
    with m.register_forward_hook(lambda mod, args, out: F.tanh(out)):
        nnx.gradcheck(m, (rng.standard_normal((4, 3)),))
    assert not m._forward_hooks


def test_pre_hook_inside_a_composite_is_differentiated(rng):
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)).double()
    m[1].register_forward_pre_hook(lambda mod, args: F.tanh(args[0]))
    x = rng.standard_normal((4, 3))
    y = m(x)
    h = np.tanh(m[0](x))
    np.testing.assert_allclose(y, h @ m[1].weight.data.T + m[1].bias.data, rtol=1e-12,
                               atol=1e-12)          # float64, 3-term dot products
    nnx.gradcheck(m, (x,))                           # the tanh is on Sequential's tape


def test_forward_hook_replacing_a_hand_written_output_raises(rng):
    lin = nn.Linear(3, 2)
    lin.register_forward_hook(lambda mod, args, out: out * 2)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(RuntimeError, match="hand-written backward"):
        lin(x)
    with nnx.no_grad():
        assert lin(x).shape == (4, 2)


# ------------------------------------------------------------------ containers
def test_module_list_semantics_match_torch():
    torch = pytest.importorskip("torch")
    for lib in (nn, torch.nn):
        a, b, c, d = (lib.Linear(i + 1, i + 2) for i in range(4))
        ml = lib.ModuleList([a, b])
        ml.append(c)
        ml.insert(1, d)
        assert list(ml) == [a, d, b, c] and len(ml) == 4
        assert ml[-1] is c and list(ml[1:3]) == [d, b]
        del ml[0]
        assert list(ml) == [d, b, c]
        ml += [a]
        ml[0] = a
        assert [n for n, _ in ml.named_children()] == ["0", "1", "2"]   # a again at "3"
        assert sorted({k.split(".")[0] for k in ml.state_dict()}) == ["0", "1", "2", "3"]
        with pytest.raises(IndexError):
            ml[4]
        with pytest.raises(NotImplementedError):
            ml(torch.zeros(1) if lib is torch.nn else np.zeros(1))


def test_module_dict_semantics_match_torch():
    torch = pytest.importorskip("torch")
    for lib in (nn, torch.nn):
        md = lib.ModuleDict({"enc": lib.Linear(2, 3)})
        md.update([("dec", lib.Linear(3, 2))])
        md["act"] = lib.ReLU()
        assert list(md) == list(md.keys()) == ["enc", "dec", "act"] and len(md) == 3
        assert "dec" in md and isinstance(md["enc"], lib.Linear)
        assert [type(v).__name__ for v in md.values()] == ["Linear", "Linear", "ReLU"]
        assert list(md.state_dict()) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
        assert isinstance(md.pop("act"), lib.ReLU) and len(md) == 2
        del md["enc"]
        assert [k for k, _ in md.items()] == ["dec"]
        md.clear()
        assert len(md) == 0 and not list(md.parameters())
        with pytest.raises(KeyError):
            md["x"]


def test_containers_register_for_training(rng):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(3, 3) for _ in range(2)])
            self.heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 2)})

        def forward(self, x):
            for blk in self.blocks:
                x = F.tanh(blk(x))
            return F.cat([self.heads["a"](x), self.heads["b"](x)], dim=1)

    m = Net().double()
    assert m.num_parameters() == 2 * 12 + 4 + 8
    assert "heads.b.bias" in m.state_dict() and "blocks.1.weight" in m.state_dict()
    nnx.gradcheck(m, (rng.standard_normal((4, 3)),))
