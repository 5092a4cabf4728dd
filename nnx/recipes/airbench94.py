r"""The airbench94 CIFAR-10 recipe (Jordan, 2024; 94.01% mean test accuracy in 3.83 s on
an A100, as published), in nnx, on the ``cpu`` or ``cuda`` backend.

Network: :class:`nnx.models.Airbench94`.  Training, with batch ``b = 1024`` and
hyper-parameters expressed per 1024 examples (``lr = 11.5``, ``wd = 0.0153``, momentum
``μ = 0.85``)::

    kilostep = 1024 · (1 + 1/(1-μ))           (Nesterov's steady-state step gain)
    lr_0 = lr / kilostep,   wd_0 = wd · b / kilostep,   lr_bn = 64 · lr_0
    SGD(Nesterov, μ) with two groups:
        BatchNorm biases:  lr = lr_bn,  weight_decay = wd_0 / lr_bn
        everything else:   lr = lr_0,   weight_decay = wd_0 / lr_0     (trainable only)
    loss = Σ_batch CrossEntropy(label_smoothing = 0.2)                  (a sum, not a mean)
    lr_t = base_lr · tri(t): linear 0.2 → 1 over the first 23% of the T steps, → 0.07 at T
    T = ceil(9.9 · steps per epoch)   (10 epochs, the last cut short; drop_last batches)

The whitening layer's weight comes from the first 5000 training images
(:func:`nnx.nn.whitening.whitening_init_`, frozen); its bias trains for the first 3 epochs
only.  From epoch 3 on, every 5th step updates a :class:`nnx.optim.Lookahead` of the
weights (the first such step creates it) with decay ``0.95^5 · (t/T)^3``
(:func:`nnx.optim.lookahead_decay`), and each epoch ends by copying the average back.
Augmentation: :class:`nnx.data.alternating_flip.AlternatingFlipTranslate` (translate 2).
Evaluation: test accuracy without and with test-time augmentation (:func:`nnx.tta.predict`,
level 2).

Command line (``python -m nnx.recipes.airbench94`` or ``nnx-train --recipe airbench94``)::

    python -m nnx.recipes.airbench94 --dataset cifar10 --data ~/datasets --backend cuda
    python -m nnx.recipes.airbench94 --dataset digits --widths 16,32,32 --batch-size 128
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import backend as B
from ..data.alternating_flip import AlternatingFlipTranslate
from ..data.datasets import DATASETS, get_dataset
from ..data.transforms import Normalize
from ..models.airbench import Airbench94
from ..nn.loss import CrossEntropyLoss
from ..nn.whitening import whitening_init_
from ..optim.lookahead import Lookahead, lookahead_decay
from ..optim.lr_scheduler import LambdaLR
from ..optim.sgd import SGD
from ..random import manual_seed
from .. import tta


@dataclass
class Config:
    """The published hyper-parameters (``hyp`` of ``airbench94.py``) as defaults."""
    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5                 # per 1024 examples
    momentum: float = 0.85
    weight_decay: float = 0.0153     # per 1024 examples, decoupled from the lr
    bias_scaler: float = 64.0        # lr factor (not wd) of the BatchNorm biases
    label_smoothing: float = 0.2
    lr_start: float = 0.2            # the triangle: start, peak position, end
    lr_peak: float = 0.23
    lr_end: float = 0.07
    ema_start_epochs: int = 3
    ema_decay_base: float = 0.95
    ema_decay_pow: float = 3.0
    ema_every_n_steps: int = 5
    whiten_bias_epochs: int = 3
    whiten_kernel: int = 2
    whiten_images: int = 5000
    whiten_eps: float = 5e-4
    flip: bool = True
    translate: int = 2
    bn_momentum: float = 0.6
    widths: tuple = field(default=(64, 256, 256))
    scaling_factor: float = 1 / 9
    tta_level: int = 2
    eval_batch_size: int = 2000


def triangle(total_steps: int, start: float, end: float, peak: float):
    """Multipliers ``tri(0..T)``: piecewise linear through ``(0, start)``,
    ``(⌊peak·T⌋, 1)`` and ``(T, end)``."""
    top = int(peak * total_steps)
    return np.interp(np.arange(total_steps + 1), [0, top, total_steps], [start, 1.0, end])


def build_model(cfg: Config, in_channels=3, num_classes=10, dtype=None):
    return Airbench94(in_channels, num_classes, cfg.widths, cfg.whiten_kernel,
                      cfg.bn_momentum, scale=cfg.scaling_factor, dtype=dtype)


def build_optimizer(model, cfg: Config, total_steps: int):
    """Nesterov SGD with the two parameter groups and the triangular :class:`LambdaLR`."""
    kilostep = 1024 * (1 + 1 / (1 - cfg.momentum))
    lr = cfg.lr / kilostep
    wd = cfg.weight_decay * cfg.batch_size / kilostep
    lr_bias = lr * cfg.bias_scaler
    biases = model.batchnorm_biases()
    ids = {id(p) for p in biases}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    optimizer = SGD([dict(params=biases, lr=lr_bias, weight_decay=wd / lr_bias),
                     dict(params=others, lr=lr, weight_decay=wd / lr)],
                    momentum=cfg.momentum, nesterov=True)
    schedule = triangle(total_steps, cfg.lr_start, cfg.lr_end, cfg.lr_peak)
    return optimizer, LambdaLR(optimizer, lambda t: schedule[t])


def train(model, images, labels, cfg: Config, hook=None, log=None):
    """Train ``model`` (whitening layer already initialised) on normalised ``images`` and
    ``labels`` (arrays of the active backend).  ``hook(event, info)`` is called at the start
    of every epoch (``"epoch_start"``: the augmentation, the shuffling ``order`` and the
    epoch's images), after every step (``"step"``: epoch, step, inputs, labels, logits, loss,
    lookahead, optimizer) and at the end of every epoch (``"epoch_end"``), for tests and
    logging.  Returns per-epoch statistics."""
    be = B.get()
    n = images.shape[0]
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"airbench94: batch size {cfg.batch_size} is larger than the "
                         f"{n} training images")
    total = math.ceil(steps_per_epoch * cfg.epochs)
    optimizer, scheduler = build_optimizer(model, cfg, total)
    criterion = CrossEntropyLoss(reduction="sum", label_smoothing=cfg.label_smoothing)
    aug = AlternatingFlipTranslate(images, cfg.translate, cfg.flip)
    lookahead, step, history = None, 0, []
    hook = hook or (lambda event, info: None)
    for epoch in range(math.ceil(cfg.epochs)):
        start = time.perf_counter()
        model.whiten.bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
        model.train()
        epoch_images = aug.epoch_images(epoch)
        order = be.xp.argsort(be.random((n,)))        # a random permutation
        hook("epoch_start", dict(epoch=epoch, aug=aug, order=order, images=epoch_images))
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb, yb = epoch_images[idx], labels[idx]
            logits = model(xb)
            loss = criterion(logits, yb)
            optimizer.zero_grad()
            model.backward(criterion.backward(), input_grad=False)
            optimizer.step()
            scheduler.step()
            step += 1
            if epoch >= cfg.ema_start_epochs and step % cfg.ema_every_n_steps == 0:
                if lookahead is None:
                    lookahead = Lookahead(model)
                else:
                    lookahead.update(lookahead_decay(step, total, cfg.ema_decay_base,
                                                     cfg.ema_every_n_steps, cfg.ema_decay_pow))
            hook("step", dict(epoch=epoch, step=step, inputs=xb, labels=yb, logits=logits,
                              loss=loss, lookahead=lookahead, optimizer=optimizer))
            if step >= total:
                break
        if lookahead is not None:
            lookahead.update(1.0)
        be.synchronize()
        stats = dict(epoch=epoch, steps=step, seconds=time.perf_counter() - start,
                     train_loss=float(loss) / xb.shape[0],
                     train_acc=float((logits.argmax(1) == yb).mean()))
        history.append(stats)
        hook("epoch_end", dict(stats, lookahead=lookahead))
        if log:
            log(json.dumps(stats))
    return history


def accuracy(model, images, labels, level: int, batch_size: int) -> float:
    logits = tta.predict(model, images, level, batch_size)
    return float((logits.argmax(1) == labels).mean())


def upsample_to(images, size: int):
    """Nearest-neighbour upsampling by an integer factor to at least ``size`` (the network
    needs 32x32 input; e.g. 8x8 digits become 32x32)."""
    factor = max(1, math.ceil(size / images.shape[2]))
    return images.repeat(factor, axis=2).repeat(factor, axis=3) if factor > 1 else images


def run(cfg: Config, dataset: str = "cifar10", root=None, backend: str = "cpu", seed: int = 0,
        train_limit=None, download: bool = True, log=print):
    """The whole recipe: data, whitening initialisation, training and evaluation.
    ``dataset``: a name of :data:`nnx.data.datasets.DATASETS` or an
    :class:`~nnx.data.ImageDataset`.  Returns a dict with ``test_acc``, ``tta_test_acc``,
    per-epoch ``history`` and the timings."""
    be = B.use(backend)
    manual_seed(seed)
    ds = get_dataset(dataset, root, download=download) if isinstance(dataset, str) else dataset
    x_train, y_train = ds.x_train[:train_limit], ds.y_train[:train_limit]
    norm = Normalize(ds.mean, ds.std)
    x_train = norm(be.asarray(upsample_to(x_train, 32)))
    x_test = norm(be.asarray(upsample_to(ds.x_test, 32)))
    y_train, y_test = be.asarray(y_train), be.asarray(ds.y_test)
    model = build_model(cfg, ds.in_channels, ds.num_classes)
    start = time.perf_counter()
    whitening_init_(model.whiten, x_train[:cfg.whiten_images], cfg.whiten_eps)
    history = train(model, x_train, y_train, cfg, log=log)
    train_seconds = time.perf_counter() - start
    result = dict(dataset=ds.name, backend=backend, seed=seed, train_images=int(x_train.shape[0]),
                  test_acc=accuracy(model, x_test, y_test, 0, cfg.eval_batch_size),
                  tta_test_acc=accuracy(model, x_test, y_test, cfg.tta_level,
                                        cfg.eval_batch_size),
                  train_seconds=train_seconds,
                  seconds_per_epoch=train_seconds / cfg.epochs, history=history,
                  config=asdict(cfg))
    if log:
        log(json.dumps({k: v for k, v in result.items() if k not in ("history", "config")}))
    return result


def build_parser(prog="airbench94"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="cifar10")
    p.add_argument("--data", default=None, help="CIFAR-10 directory or archive (see nnx-train)")
    p.add_argument("--backend", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=Config.epochs)
    p.add_argument("--batch-size", type=int, default=Config.batch_size)
    p.add_argument("--widths", default="64,256,256", help="three widths, e.g. 16,32,32")
    p.add_argument("--whiten-images", type=int, default=Config.whiten_images)
    p.add_argument("--tta-level", type=int, choices=tta.LEVELS, default=Config.tta_level)
    p.add_argument("--train-limit", type=int, default=None,
                   help="use only the first N training images (quick runs)")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    return p


def main(argv=None, prog="airbench94"):
    """Entry point; returns the result dict."""
    args = build_parser(prog).parse_args(argv)
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        raise SystemExit(f"airbench94: --widths must be three integers, got {args.widths!r}")
    cfg = Config(epochs=args.epochs, batch_size=args.batch_size, widths=widths,
                 whiten_images=args.whiten_images, tta_level=args.tta_level)
    from ..data.errors import DataError
    try:
        result = run(cfg, args.dataset, args.data, args.backend, args.seed, args.train_limit,
                     download=not args.no_download)
    except (DataError, B.BackendUnavailableError, ValueError) as exc:
        raise SystemExit(f"airbench94: {exc}") from None
    if args.json:
        from ..atomic_files import atomic_open
        with atomic_open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
