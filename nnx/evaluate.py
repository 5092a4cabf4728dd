"""Evaluate a classifier (or a checkpoint written by ``nnx-train``) on a test set.

``nnx-eval --checkpoint runs/digits-simple_cnn/checkpoint.npz`` rebuilds the model from the
checkpoint's metadata (model name and keyword arguments, data set, normalisation) and prints
accuracy, per-class F1 and the confusion matrix (rows: true class, columns: predicted).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import backend as B


def predict(model, x, batch_size: int = 256, transform=None) -> np.ndarray:
    """Arg-max class of every image of host array ``x``, in eval mode and under
    :class:`nnx.no_grad` (nothing is kept for a backward), as host ``int64``."""
    from .data.loader import DataLoader
    from .nn.tape import no_grad
    be = B.get()
    was_training = model.training
    model.eval()
    try:
        out = []
        loader = DataLoader((x, np.zeros(len(x), np.int64)), batch_size, transform=transform)
        with no_grad():
            for xb, _ in loader:
                out.append(be.to_numpy(model(xb).argmax(axis=1)))
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def evaluate_model(model, x, y, num_classes: int, batch_size: int = 256,
                   transform=None) -> dict:
    """``{"accuracy", "f1_macro", "f1_per_class", "confusion_matrix", "num_samples"}``."""
    from . import metrics
    pred = predict(model, x, batch_size, transform)
    y = np.asarray(y, np.int64)
    return {"accuracy": metrics.accuracy(y, pred),
            "f1_macro": metrics.f1_score(y, pred, num_classes=num_classes),
            "f1_per_class": metrics.f1_score(y, pred, num_classes=num_classes, average=None),
            "confusion_matrix": metrics.confusion_matrix(y, pred, num_classes=num_classes),
            "num_samples": int(len(y))}


def format_report(result: dict, classes) -> str:
    """A readable report: accuracy, macro F1, per-class F1 and the confusion matrix."""
    classes = [str(c) for c in classes]
    cm = result["confusion_matrix"]
    lines = [f"test accuracy: {result['accuracy']:.4f} ({result['num_samples']} images)",
             f"macro F1:      {result['f1_macro']:.4f}", "", "per-class F1:"]
    width = max(len(c) for c in classes)
    for c, f, support in zip(classes, result["f1_per_class"], cm.sum(axis=1)):
        lines.append(f"  {c:>{width}}  {f:.4f}  (n={int(support)})")
    lines += ["", "confusion matrix (rows: true class, columns: predicted class):"]
    cell = max(4, len(str(int(cm.max(initial=0)))) + 1)
    short = [c[:cell - 1] for c in classes]
    lines.append(" " * (width + 2) + "".join(f"{s:>{cell}}" for s in short))
    for c, row in zip(classes, cm):
        lines.append(f"  {c:>{width}}" + "".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


def evaluate_checkpoint(path, dataset: str | None = None, data_dir=None,
                        batch_size: int = 256, download: bool = True) -> tuple[dict, tuple]:
    """Rebuild the model stored in the ``nnx-train`` checkpoint ``path`` and evaluate it on
    the test split of its data set (or ``dataset``).  Returns ``(result, classes)``."""
    from . import models
    from .checkpoint import CheckpointError, load, read_extra
    from .data.datasets import get_dataset
    from .data.transforms import Normalize
    extra = read_extra(path)
    spec = extra.get("model_spec")
    if not spec or "name" not in spec:
        raise CheckpointError(f"checkpoint {str(path)!r} has no model description (it was "
                              "not written by nnx-train); evaluate the model in Python with "
                              "nnx.evaluate.evaluate_model")
    model = models.get(spec["name"], **spec.get("kwargs", {}))
    load(path, model=model)
    ds = get_dataset(dataset or extra.get("dataset", "cifar10"), data_dir, download=download)
    kwargs = spec.get("kwargs", {})
    wanted = {"in_channels": ds.in_channels, "image_size": ds.image_size,
              "num_classes": ds.num_classes}
    wrong = [f"{k} {kwargs[k]} (the data set has {v})" for k, v in wanted.items()
             if k in kwargs and kwargs[k] != v]
    if wrong:
        raise ValueError(f"the checkpoint's model was trained on "
                         f"{extra.get('dataset', 'another data set')} and does not fit "
                         f"{ds.name}: {', '.join(wrong)}")
    norm = extra.get("normalize") or {"mean": ds.mean, "std": ds.std}
    result = evaluate_model(model, ds.x_test, ds.y_test, ds.num_classes, batch_size,
                            Normalize(norm["mean"], norm["std"]))
    return result, ds.classes


def build_parser() -> argparse.ArgumentParser:
    from .train_options import _AT_LEAST_1
    p = argparse.ArgumentParser(prog="nnx-eval", description="Accuracy, per-class F1 and "
                                "confusion matrix of an nnx-train checkpoint on a test set.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.npz written by nnx-train")
    p.add_argument("--dataset", choices=("cifar10", "digits"), default=None,
                   help="data set (default: the one the checkpoint was trained on)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="CIFAR-10 directory or archive (default: $NNX_DATA or ~/.cache/nnx)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download CIFAR-10 when it is not cached (default: on)")
    p.add_argument("--batch-size", type=_AT_LEAST_1, default=256,
                   help="images per forward pass (default: 256)")
    p.add_argument("--backend", choices=("cpu", "cuda"), default=None,
                   help="compute backend (default: $NNX_BACKEND or cpu)")
    return p


def main(argv=None):
    """Console entry point (``nnx-eval``).  Returns the accuracy when ``argv`` is given
    (for use from Python), ``None`` when run as a script (exit status 0)."""
    from .checkpoint import CheckpointError
    from .data.errors import DataError
    args = build_parser().parse_args(argv)
    try:
        if args.backend:
            B.use(args.backend)
        result, classes = evaluate_checkpoint(args.checkpoint, args.dataset, args.data,
                                              args.batch_size, download=args.download)
    except (DataError, CheckpointError, ValueError, B.BackendUnavailableError) as exc:
        print(f"nnx-eval: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(result, classes))
    return result["accuracy"] if argv is not None else None


if __name__ == "__main__":
    main()
