r"""Airbench's training augmentation: alternating flip and random translation, per epoch.

For ``N`` images ``x (N, C, H, W)`` (already normalised) and translation ``r`` pixels:

* once, when created: each image is mirrored left-right with probability ½ (the mask
  ``flip_mask`` is kept) and the result is reflect-padded by ``r`` on every side;
* every epoch ``e``: each image is cut at an offset ``(s_y, s_x)`` drawn uniformly from
  ``{-r..r}²`` (``shifts``, one pair per image, fresh each epoch) out of the padded copy,
  and on **odd** epochs the whole set is mirrored.

So every image is seen mirrored on every other epoch (Jordan, 2024, "alternating flip"),
which covers both orientations more evenly than independent random flips.  ``flip=False``
or ``translate=0`` turns either part off.  Random numbers come from the active backend's
generator (reproducible from ``nnx.manual_seed``).
"""
from __future__ import annotations

from .. import backend as B


def reflect_pad(x, pad: int):
    """Pad the last two axes of ``(N, C, H, W)`` by ``pad`` with their mirror image
    (without repeating the edge: PyTorch's ``'reflect'``)."""
    if pad == 0:
        return x
    return B.get().xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")


def translate(padded, shifts, size):
    """Cut ``size = (H, W)`` windows out of ``padded (N, C, H+2r, W+2r)``: image ``n`` at
    rows ``r + shifts[n, 0] + (0..H-1)`` and columns ``r + shifts[n, 1] + (0..W-1)``."""
    xp = B.get().xp
    n, c, hp, wp = padded.shape
    h, w = size
    ry, rx = (hp - h) // 2, (wp - w) // 2
    rows = (ry + shifts[:, 0])[:, None] + xp.arange(h)                # (N, H)
    cols = (rx + shifts[:, 1])[:, None] + xp.arange(w)                # (N, W)
    return padded[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class AlternatingFlipTranslate:
    """The augmented training set of each epoch (see the module docstring).

    ``epoch_images(e)`` returns the ``N`` images of epoch ``e`` (in their original order;
    the caller shuffles) and keeps the offsets it drew in ``shifts``."""

    def __init__(self, images, translate: int = 2, flip: bool = True):
        if images.ndim != 4:
            raise ValueError(f"AlternatingFlipTranslate expects images (N, C, H, W), got "
                             f"shape {tuple(images.shape)}")
        self.translate, self.flip = int(translate), bool(flip)
        if self.translate < 0 or self.translate >= min(images.shape[2:]):
            raise ValueError(f"AlternatingFlipTranslate: translate must be in [0, "
                             f"{min(images.shape[2:])}), got {translate}")
        be = B.get()
        self.size = tuple(images.shape[2:])
        self.flip_mask = None
        if self.flip:
            self.flip_mask = be.random((images.shape[0],)) < 0.5
            images = be.xp.where(self.flip_mask[:, None, None, None], images[..., ::-1], images)
        self.base = reflect_pad(images, self.translate)
        self.shifts = None

    def epoch_images(self, epoch: int):
        be = B.get()
        x = self.base
        if self.translate:
            r = self.translate
            self.shifts = be.randint(-r, r + 1, (x.shape[0], 2))
            x = translate(x, self.shifts, self.size)
        if self.flip and epoch % 2 == 1:
            x = x[..., ::-1]
        return be.xp.ascontiguousarray(x)


__all__ = ["AlternatingFlipTranslate", "reflect_pad", "translate"]
