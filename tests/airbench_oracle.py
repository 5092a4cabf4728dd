"""A PyTorch port of the published airbench94 recipe (KellerJordan/cifar10-airbench,
``airbench94.py``), written for the parity tests: the network, the whitening
initialisation, the loader's flip/translate (with its random draws given, so that both
sides see the same batches), the optimizer groups, the triangular schedule, the lookahead
state and the test-time augmentation, as the script does them.  Deviations from the script,
none of which changes the arithmetic being compared: float32/float64 instead of half
precision, no channels_last, ``padding=1`` for 'same', the patch covariance in float64
(see ``whitening_weights``) and the schedule's multipliers in float64 (the script's are
float32 tensors: a relative difference below 6e-8 in the learning rate)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as TF


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class Norm(nn.BatchNorm2d):
    def __init__(self, width, momentum=0.6, eps=1e-12):
        super().__init__(width, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


def conv(c_in, c_out, k=3, padding=1, bias=False):
    layer = nn.Conv2d(c_in, c_out, k, padding=padding, bias=bias)
    if bias:
        layer.bias.data.zero_()
    torch.nn.init.dirac_(layer.weight.data[:c_in])
    return layer


class Group(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1, self.pool, self.norm1 = conv(c_in, c_out), nn.MaxPool2d(2), Norm(c_out)
        self.conv2, self.norm2, self.activ = conv(c_out, c_out), Norm(c_out), nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def make_net(widths, in_channels=3, classes=10, scale=1 / 9, kernel=2):
    w = 2 * in_channels * kernel ** 2
    net = nn.Sequential(conv(in_channels, w, kernel, padding=0, bias=True), nn.GELU(),
                        Group(w, widths[0]), Group(widths[0], widths[1]),
                        Group(widths[1], widths[2]), nn.MaxPool2d(3), nn.Flatten(),
                        nn.Linear(widths[2], classes, bias=False), Mul(scale))
    net[0].weight.requires_grad = False
    return net


def whitening_weights(images, kernel=2, eps=5e-4):
    """The script's patches → covariance → eigh → ``cat(V/√(λ+ε), -V/√(λ+ε))`` (in float64:
    the script's float32 covariance gives eigenvectors accurate to u·‖Σ‖/gap only)."""
    c = images.shape[1]
    patches = images.double().unfold(2, kernel, 1).unfold(3, kernel, 1)
    patches = patches.transpose(1, 3).reshape(-1, c, kernel, kernel)
    flat = patches.reshape(len(patches), -1)
    lam, vec = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
    lam, vec = lam.flip(0).view(-1, 1, 1, 1), vec.T.reshape(-1, c, kernel, kernel).flip(0)
    scaled = vec / torch.sqrt(lam + eps)
    return torch.cat((scaled, -scaled))


def epoch_images(pre_flipped_padded, shifts, epoch, size, flip=True):
    """The script's ``batch_crop`` (r ≤ 2 branch: one masked copy per shift) and the flip of
    the whole set on odd epochs."""
    r = (pre_flipped_padded.shape[-1] - size) // 2
    out = torch.empty(pre_flipped_padded.shape[:2] + (size, size),
                      dtype=pre_flipped_padded.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[mask] = pre_flipped_padded[mask, :, r + sy:r + sy + size, r + sx:r + sx + size]
    return out.flip(-1) if flip and epoch % 2 == 1 else out


def prepare(images, flip_mask, pad):
    """Epoch 0's pre-flip (``where(mask, flip, x)``) and reflect pre-padding."""
    flipped = torch.where(flip_mask.view(-1, 1, 1, 1), images.flip(-1), images)
    return TF.pad(flipped, (pad,) * 4, "reflect")


def triangle(steps, start=0.2, end=0.07, peak=0.23):
    xp = torch.tensor([0, int(peak * steps), steps])
    fp = torch.tensor([start, 1, end], dtype=torch.float64)
    x = torch.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - m * xp[:-1]
    idx = torch.clamp(torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1, 0, len(m) - 1)
    return m[idx] * x + b[idx]


def optimizer(net, total_steps, batch_size, lr=11.5, momentum=0.85, wd=0.0153, bias_scaler=64.0):
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = lr / kilostep, wd * batch_size / kilostep
    lr_b = lr * bias_scaler
    norm_biases = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    opt = torch.optim.SGD([dict(params=norm_biases, lr=lr_b, weight_decay=wd / lr_b),
                           dict(params=others, lr=lr, weight_decay=wd / lr)],
                          momentum=momentum, nesterov=True)
    schedule = triangle(total_steps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(schedule[i]))


class Lookahead:
    def __init__(self, net):
        self.ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema, p in zip(self.ema.values(), net.state_dict().values()):
            if p.dtype.is_floating_point:
                ema.lerp_(p, 1 - decay)
                p.copy_(ema)


def tta_logits(net, x):
    """The script's ``infer_mirror_translate`` (tta_level 2)."""
    def mirror(v):
        return 0.5 * net(v) + 0.5 * net(v.flip(-1))
    padded = TF.pad(x, (1,) * 4, "reflect")
    h, w = x.shape[2:]
    shifted = [padded[:, :, 0:h, 0:w], padded[:, :, 2:h + 2, 2:w + 2]]
    return 0.5 * mirror(x) + 0.5 * torch.stack([mirror(s) for s in shifted]).mean(0)
