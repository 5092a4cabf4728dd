"""Reference CNN (268,650 parameters), its summary and receptive fields, the small ResNet,
and loading a PyTorch state_dict."""
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

import nnx
from layer_harness import check_layer
from nnx import models
from nnx.nn import CrossEntropyLoss
from nnx.nn import functional as F


def test_simple_cnn_parameter_count_matches_seeds(backend):
    m = models.get("simple_cnn")
    assert m.num_parameters() == 268_650
    per_layer = {name: int(sum(p.size for p in mod.parameters()))
                 for name, mod in m.named_children()}
    assert (per_layer["conv1"], per_layer["conv2"], per_layer["fc1"], per_layer["fc2"]) == \
        (448, 4_640, 262_272, 1_290)


def test_summary_shapes_and_receptive_fields(backend):
    s = nnx.summary(models.SimpleCNN(), (3, 32, 32))
    assert s.total_params == 268_650
    shapes = [r.output_shape for r in s.rows]
    assert shapes == [(1, 16, 32, 32)] * 2 + [(1, 16, 16, 16)] + [(1, 32, 16, 16)] * 2 + \
        [(1, 32, 8, 8), (1, 2048), (1, 128), (1, 128), (1, 10)]
    rf = {r.name: r.rf for r in s.rows}
    # r_out = r_in + (k-1)·d·j_in, j_out = j_in·s, start_out = start_in + ((k-1)d/2 - p)·j_in
    assert (rf["conv1"].size, rf["conv1"].jump, rf["conv1"].start) == ((3, 3), (1, 1), (0, 0))
    assert (rf["pool1"].size, rf["pool1"].jump, rf["pool1"].start) == ((4, 4), (2, 2),
                                                                       (0.5, 0.5))
    assert (rf["conv2"].size, rf["conv2"].jump) == ((8, 8), (2, 2))
    assert (rf["pool2"].size, rf["pool2"].jump, rf["pool2"].start) == ((10, 10), (4, 4),
                                                                       (1.5, 1.5))
    assert rf["fc1"] is None and s["fc2"].params == 1_290
    text = str(s)
    assert "268,650" in text and "(1, 32, 8, 8)" in text and "global" in text


def test_summary_dilation_stride_and_training_flags(backend):
    m = nnx.nn.Sequential(nnx.nn.Conv2d(1, 2, 3, stride=2, padding=2, dilation=2),
                          nnx.nn.BatchNorm2d(2), nnx.nn.MaxPool2d(2))
    s = nnx.summary(m, (2, 1, 9, 9))
    assert s.rows[0].output_shape == (2, 2, 5, 5)
    assert s.rows[0].rf.size == (5, 5) and s.rows[0].rf.jump == (2, 2)
    assert s.rows[0].rf.start == (0, 0)                      # (3-1)·2/2 - 2 = 0
    assert s.rows[2].rf.size == (7, 7) and s.rows[2].rf.jump == (4, 4)
    assert m.training and m[1].training
    assert int(m[1].num_batches_tracked) == 0               # forward ran in eval mode


@pytest.mark.parametrize("name", ["simple_cnn", "resnet"])
def test_models_on_digits_and_cifar(backend, rng, name):
    for c, size, n in [(1, 8, 3), (3, 32, 2)]:
        m = models.get(name, in_channels=c, num_classes=10, image_size=size)
        x = rng.standard_normal((n, c, size, size)).astype(np.float32)
        y = m(x)
        assert y.shape == (n, 10) and y.dtype == np.float32
        loss = CrossEntropyLoss()
        loss(y, backend.asarray(np.arange(n) % 10))
        dx = m.backward(loss.backward())
        assert dx.shape == x.shape
        assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())


def test_resnet_summary_and_state_dict(backend):
    m = models.get("resnet", width=8)
    s = nnx.summary(m, (3, 16, 16))
    assert s.rows[-1].output_shape == (1, 10)
    assert s["layer3.0.res"].output_shape == (1, 32, 4, 4)
    assert s["layer1.0.res"].rf.size == (7, 7)
    keys = list(m.state_dict())
    assert "layer2.0.res.shortcut.bn.running_var" in keys
    assert "layer1.0.res.body.bn1.num_batches_tracked" in keys
    with pytest.raises(ValueError, match="unknown model"):
        models.get("vgg")


def test_residual_block(backend, rng):
    x = rng.standard_normal((2, 2, 4, 3))
    tol = dict(atol=1e-6, rtol=1e-4)
    check_layer(lambda dt: models.BasicBlock(2, 3, stride=2, dtype=dt), (x,), gradcheck_kw=tol)
    check_layer(lambda dt: models.BasicBlock(2, 2, dtype=dt).eval(), (x,), gradcheck_kw=tol,
                skip=("cpu_vs_cuda",))


def test_simple_cnn_loads_torch_state_dict(backend, rng):
    torch = pytest.importorskip("torch")
    tn = torch.nn
    torch.manual_seed(0)
    ref = tn.Sequential(OrderedDict([
        ("conv1", tn.Conv2d(3, 16, 3, padding=1)), ("relu1", tn.ReLU()),
        ("pool1", tn.MaxPool2d(2)), ("conv2", tn.Conv2d(16, 32, 3, padding=1)),
        ("relu2", tn.ReLU()), ("pool2", tn.MaxPool2d(2)), ("flatten", tn.Flatten()),
        ("fc1", tn.Linear(2048, 128)), ("relu3", tn.ReLU()), ("fc2", tn.Linear(128, 10))]))
    m = models.SimpleCNN()
    assert list(m.state_dict()) == list(ref.state_dict())
    m.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    labels = np.array([1, 0, 9, 3])
    loss = CrossEntropyLoss()
    out = loss(m(x), backend.asarray(labels))
    m.zero_grad()
    m.backward(loss.backward())
    tx = torch.tensor(x)
    tout = tn.functional.cross_entropy(ref(tx), torch.tensor(labels))
    tout.backward()
    np.testing.assert_allclose(float(out), float(tout.detach()), rtol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(m(x)), ref(tx).detach().numpy(), atol=1e-5)
    grads = dict(m.named_parameters())
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(backend.to_numpy(grads[name].grad), p.grad.numpy(),
                                   atol=1e-5, rtol=1e-4, err_msg=name)


# ------------------------------------------------------------------ any module
class _SeqClassifier(nnx.nn.Module):
    """A batch-first LSTM whose last step feeds a Linear (a custom module)."""

    def __init__(self):
        super().__init__()
        self.rnn = nnx.nn.LSTM(4, 8, batch_first=True)
        self.fc = nnx.nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(F.select(out, 1, -1))


def test_summary_breaks_custom_module_down_on_sequence_input(backend):
    m = _SeqClassifier()
    s = nnx.summary(m, (2, 5, 4))                  # (N, T, F): no batch axis added
    assert s.input_shape == (2, 5, 4)
    assert [(r.name, r.layer) for r in s.rows] == [("rnn", "LSTM"), ("fc", "Linear")]
    assert s["rnn"].output_shape == ((2, 5, 8), ((1, 2, 8), (1, 2, 8)))
    assert s["fc"].output_shape == (2, 3)
    # 4·(8·4 + 8·8 + 8 + 8) LSTM weights and biases, 8·3 + 3 for the Linear
    assert [r.params for r in s.rows] == [448, 27] and s.total_params == m.num_parameters()
    text = str(s)
    assert "Receptive field" not in text and "((2, 5, 8), ((1, 2, 8), (1, 2, 8)))" in text


def test_summary_of_custom_image_module_counts_shared_and_own_parameters(backend):
    class Net(nnx.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nnx.nn.Sequential(nnx.nn.Conv2d(3, 4, 3), nnx.nn.ReLU())
            self.head = nnx.nn.Linear(4, 4)
            self.scale = nnx.nn.Parameter(np.ones(4, dtype=np.float32))

        def forward(self, x):
            h = F.mean(self.features(x), dim=(2, 3))
            return self.head(self.head(h))          # one layer called twice

    s = nnx.summary(Net(), (3, 8, 8))               # (C, H, W): batch of 1 added
    assert s.input_shape == (1, 3, 8, 8)
    assert [r.name for r in s.rows] == ["features.0", "features.1", "head", "head", "Net"]
    assert [r.output_shape for r in s.rows] == [(1, 4, 6, 6), (1, 4, 6, 6), (1, 4), (1, 4),
                                                (1, 4)]
    assert [r.params for r in s.rows] == [112, 0, 20, 0, 4]   # the repeat counts 0
    assert sum(r.params for r in s.rows) == s.total_params == 136


def test_summary_accepts_an_input_array(backend, rng):
    x = backend.asarray(rng.standard_normal((3, 6)).astype(np.float32))
    s = nnx.summary(nnx.nn.Sequential(nnx.nn.Linear(6, 2)), x)
    assert s.input_shape == (3, 6) and s.rows[0].output_shape == (3, 2)


@pytest.mark.parametrize("via_summary", [False, True])
def test_lstm_inside_sequential_names_the_problem(backend, rng, via_summary):
    m = nnx.nn.Sequential(nnx.nn.LSTM(4, 8, batch_first=True), nnx.nn.Linear(8, 2))
    x = backend.asarray(rng.standard_normal((2, 5, 4)).astype(np.float32))
    with pytest.raises(TypeError, match=r"Sequential passes one array from layer to layer.*"
                                        r"'0' \(LSTM\) returns \(output, \(h_n, c_n\)\)"):
        nnx.summary(m, (2, 5, 4)) if via_summary else m(x)


def test_sequential_still_passes_a_tuple_to_a_layer_that_takes_one(backend, rng):
    class Pick(nnx.nn.Module):
        def forward(self, pair):
            return pair[0]

    m = nnx.nn.Sequential(nnx.nn.LSTM(4, 8, batch_first=True), Pick(), nnx.nn.Linear(8, 2))
    x = backend.asarray(rng.standard_normal((2, 5, 4)).astype(np.float32))
    assert m(x).shape == (2, 5, 2)


def test_data_and_models_are_attributes_after_import_nnx():
    code = ("import sys, nnx; lazy = 'nnx.data' not in sys.modules; "
            "print(lazy, nnx.data.DataLoader.__name__, nnx.models.get('simple_cnn').__class__"
            ".__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "DataLoader", "SimpleCNN"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nnx.nope
