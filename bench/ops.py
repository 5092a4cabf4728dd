"""Per-operation timings of the active nnx backend, with PyTorch's equivalent op alongside.

    python bench/ops.py                    # cpu, all cores
    python bench/ops.py --backend cuda     # GPU (CUDA events not needed: we synchronize)
    python bench/ops.py --quick --only conv

Operations: im2col, col2im (base.py's column layout), Conv2d forward and backward (the layer,
i.e. what a training step runs), max pooling 2x2 forward/backward, tanh backward, softmax
cross-entropy forward+backward, SGD-momentum and Adam updates.  For the memory-bound fused
element-wise kernels the achieved bandwidth (GB/s, bytes that must be read + written once)
is reported too.  nnx and PyTorch alternate (A B, B A, ...); ratio = nnx/PyTorch per round.
Results: ``bench/results/ops_<backend>[_<tag>].{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import harness  # noqa: E402

# (N, C, H, W, O): the convolutions of the reference CNN and of the ResNet's last stage
CONV_SHAPES = [(128, 3, 32, 32, 16), (128, 16, 16, 16, 32), (128, 64, 8, 8, 64)]
CONV_SHAPES_QUICK = [(8, 3, 16, 16, 8)]
POOL_SHAPES = [(128, 16, 32, 32), (128, 32, 16, 16)]
POOL_SHAPES_QUICK = [(8, 8, 16, 16)]
ELEM_SIZES = [2 ** 20, 2 ** 23]
ELEM_SIZES_QUICK = [2 ** 14]
CE_SHAPES = [(128, 10), (4096, 1000)]
CE_SHAPES_QUICK = [(32, 10)]
GROUPS = ("im2col", "col2im", "conv", "pool", "tanh", "ce", "optim")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(p, default_repeats=30)
    p.add_argument("--only", default=",".join(GROUPS),
                   help=f"comma-separated subset of {', '.join(GROUPS)}")
    p.add_argument("--budget-s", type=float, default=3.0, help="time cap per measurement")
    a = p.parse_args(argv)
    if a.quick:
        a.warmup = min(a.warmup, 1)
        a.budget_s = min(a.budget_s, 0.5)
    return a


def main(argv=None):
    args = parse_args(argv)
    threads = harness.set_threads(args.threads)
    import numpy as np
    thread_info = harness.pin_threads(threads)
    import nnx
    be = nnx.backend.use(args.backend)
    device = "cuda" if args.backend == "cuda" else "cpu"
    torch, skipped = harness.import_torch(not args.no_torch, threads, args.backend)
    if skipped:
        print(f"PyTorch comparison skipped: {skipped}")
    info = harness.machine(be)
    info["threads"] = thread_info
    command = " ".join([os.path.basename(sys.executable), *sys.argv])
    ctx = Ctx(np, nnx, be, torch, device, args)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    for g in groups:
        if g not in GROUPS:
            raise SystemExit(f"unknown op group {g!r}; choose from {', '.join(GROUPS)}")
        getattr(ctx, "bench_" + g)()
    rows = [_row(r) for r in ctx.results]
    payload = {"benchmark": "ops", "machine": info, "command": command,
               "torch_skipped": skipped, "ops": ctx.results,
               "peak_rss_mb": harness.peak_rss_mb(), "gpu_memory": harness.gpu_pool_bytes(be)}
    md = ("# nnx per-operation timings\n\n" + harness.machine_markdown(_flat(info), command)
          + ("" if not skipped else f"PyTorch comparison skipped: {skipped}\n\n")
          + "Times: median [IQR] ms; GB/s for memory-bound fused kernels (bytes read + "
            "written once / median time); ratio = nnx/PyTorch per interleaved round.\n\n"
          + harness.markdown_table(["op", "size", "nnx ms", "nnx GB/s", "PyTorch ms",
                                    "ratio nnx/PyTorch"], rows)
          + f"\nPeak RSS: {payload['peak_rss_mb']:.0f} MiB\n")
    name = f"ops_{args.backend}" + (f"_{args.tag}" if args.tag else "")
    print("wrote", *harness.write_results(name, payload, md, args.out))
    return payload


class Ctx:
    """Builds inputs on both sides and records one result per (op, size)."""

    def __init__(self, np, nnx, be, torch, device, args):
        self.np, self.nnx, self.be, self.torch, self.device, self.args = (
            np, nnx, be, torch, device, args)
        self.rng = np.random.default_rng(0)
        self.results = []
        q = args.quick
        self.conv_shapes = CONV_SHAPES_QUICK if q else CONV_SHAPES
        self.pool_shapes = POOL_SHAPES_QUICK if q else POOL_SHAPES
        self.elem_sizes = ELEM_SIZES_QUICK if q else ELEM_SIZES
        self.ce_shapes = CE_SHAPES_QUICK if q else CE_SHAPES

    # ------------------------------------------------------------------ helpers
    def host(self, *shape):
        return self.rng.standard_normal(shape, dtype=self.np.float32)

    def dev(self, a):
        return self.be.asarray(a)

    def tdev(self, a):
        return self.torch.from_numpy(self.np.ascontiguousarray(a)).to(self.device)

    def run(self, op, size, nnx_fn, torch_fn=None, nbytes=None):
        fns = {"nnx": nnx_fn}
        syncs = {"nnx": harness.make_sync(self.be)}
        if torch_fn is not None and self.torch is not None:
            fns["torch"] = torch_fn
            syncs["torch"] = harness.torch_sync(self.torch, self.device)
        res = harness.time_interleaved(fns, syncs, warmup=self.args.warmup,
                                       repeats=self.args.repeats, budget_s=self.args.budget_s)
        r = {"op": op, "size": size, "nnx": res["nnx"]}
        if nbytes:
            r["bytes"] = int(nbytes)
            r["nnx"]["gb_per_s"] = nbytes / (res["nnx"]["median_ms"] / 1e3) / 1e9
        if "torch" in res:
            r["torch"] = res["torch"]
            r["ratio"] = harness.paired_ratio(res["nnx"]["samples_ms"],
                                              res["torch"]["samples_ms"])
        self.results.append(r)
        print(f"{op:>22s} {size:<22s} nnx {harness.fmt_time(r['nnx'])} ms"
              + (f" {r['nnx']['gb_per_s']:.1f} GB/s" if nbytes else "")
              + (f" | torch {harness.fmt_time(r['torch'])} ms | ratio "
                 f"{harness.fmt_ratio(r['ratio'])}" if "torch" in r else ""), flush=True)
        return r

    # ------------------------------------------------------------------ groups
    def bench_im2col(self):
        for n, c, h, w, _ in self.conv_shapes:
            x = self.dev(self.host(n, c, h, w))
            geo = ((3, 3), (1, 1), (1, 1), (1, 1))
            tf = None
            if self.torch is not None:  # unfold is PyTorch's im2col (layout N, C*9, L)
                tx = self.tdev(self.be.to_numpy(x))
                tf = lambda: self.torch.nn.functional.unfold(tx, 3, padding=1)  # noqa: E731
            self.run("im2col", f"{n}x{c}x{h}x{w} k3p1", lambda: self.be.im2col(x, *geo), tf)

    def bench_col2im(self):
        for n, c, h, w, _ in self.conv_shapes:
            geo = ((3, 3), (1, 1), (1, 1), (1, 1))
            cols = self.dev(self.host(c * 9, n * h * w))
            tf = None
            if self.torch is not None:  # fold is PyTorch's col2im
                tc = self.tdev(self.be.to_numpy(cols).reshape(c * 9, n, h * w)
                               .transpose(1, 0, 2))
                tf = lambda: self.torch.nn.functional.fold(tc, (h, w), 3, padding=1)  # noqa
            self.run("col2im", f"{n}x{c}x{h}x{w} k3p1",
                     lambda: self.be.col2im(cols, (n, c, h, w), *geo), tf)

    def bench_conv(self):
        nn = self.nnx.nn
        for n, c, h, w, o in self.conv_shapes:
            self.nnx.manual_seed(0)
            conv = nn.Conv2d(c, o, 3, padding=1)
            conv.to(self.be)
            xh, gh = self.host(n, c, h, w), self.host(n, o, h, w)
            x, gy = self.dev(xh), self.dev(gh)
            size = f"{n}x{c}x{h}x{w}->{o} k3p1"
            tf = tb = None
            if self.torch is not None:
                T = self.torch
                tw = T.from_numpy(self.be.to_numpy(conv.weight.data)).to(self.device)
                tbias = T.from_numpy(self.be.to_numpy(conv.bias.data)).to(self.device)
                tx, tg = self.tdev(xh), self.tdev(gh)
                tf = lambda: T.nn.functional.conv2d(tx, tw, tbias, 1, 1)  # noqa: E731
                # the backward a training step runs: dx, dW and db
                tb = lambda: T.ops.aten.convolution_backward(  # noqa: E731
                    tg, tx, tw, [o], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                    [True, True, True])
            self.run("conv2d forward", size, lambda: conv(x), tf)
            conv(x)

            def nnx_bwd():
                conv.zero_grad()
                return conv.backward(gy, retain_graph=True)   # one forward, many backwards
            self.run("conv2d backward", size, nnx_bwd, tb)

    def bench_pool(self):
        nn = self.nnx.nn
        for n, c, h, w in self.pool_shapes:
            pool = nn.MaxPool2d(2)
            xh, gh = self.host(n, c, h, w), self.host(n, c, h // 2, w // 2)
            x, gy = self.dev(xh), self.dev(gh)
            size = f"{n}x{c}x{h}x{w} k2s2"
            tf = tb = None
            if self.torch is not None:
                T = self.torch
                tx, tg = self.tdev(xh), self.tdev(gh)
                _, tidx = T.nn.functional.max_pool2d(tx, 2, return_indices=True)
                tf = lambda: T.nn.functional.max_pool2d(tx, 2, return_indices=True)  # noqa
                tb = lambda: T.ops.aten.max_pool2d_with_indices_backward(  # noqa: E731
                    tg, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, tidx)
            self.run("maxpool2d forward", size, lambda: pool(x), tf)
            pool(x)
            self.run("maxpool2d backward", size,
                     lambda: pool.backward(gy, retain_graph=True), tb)

    def bench_tanh(self):
        for size in self.elem_sizes:
            yh, gh = self.np.tanh(self.host(size)), self.host(size)
            y, g = self.dev(yh), self.dev(gh)
            tf = None
            if self.torch is not None:
                ty, tg = self.tdev(yh), self.tdev(gh)
                tf = lambda: self.torch.ops.aten.tanh_backward(tg, ty)  # noqa: E731
            self.run("tanh backward", f"{size:,} f32", lambda: self.be.tanh_backward(y, g),
                     tf, nbytes=3 * 4 * size)

    def bench_ce(self):
        np = self.np
        for n, c in self.ce_shapes:
            zh = self.host(n, c)
            yh = self.rng.integers(0, c, size=n)
            z, y = self.dev(zh), self.dev(yh)
            scale = self.dev(np.full(n, 1.0 / n, dtype=np.float32))

            def nnx_ce():
                loss = self.be.softmax_cross_entropy_forward(z, y, 0.0)
                return loss, self.be.softmax_cross_entropy_backward(z, y, 0.0, scale)
            tf = None
            if self.torch is not None:
                T = self.torch
                tz, ty = self.tdev(zh), T.from_numpy(yh).to(self.device)

                def tf():
                    zz = tz.detach().requires_grad_()
                    T.nn.functional.cross_entropy(zz, ty).backward()
                    return zz.grad
            # logits read by forward and by backward, gradient written
            self.run("softmax CE fwd+bwd", f"{n}x{c}", nnx_ce, tf, nbytes=3 * 4 * n * c)

    def bench_optim(self):
        np = self.np
        for size in self.elem_sizes:
            p, g = self.dev(self.host(size)), self.dev(self.host(size) * 1e-3)
            buf = self.dev(np.zeros(size, np.float32))
            m = self.dev(np.zeros(size, np.float32))
            v = self.dev(np.zeros(size, np.float32))
            step = {"t": 0}
            tsgd = tadam = None
            if self.torch is not None:
                T = self.torch
                tp = T.nn.Parameter(self.tdev(self.be.to_numpy(p)))
                tp.grad = self.tdev(self.be.to_numpy(g))
                tq = T.nn.Parameter(self.tdev(self.be.to_numpy(p)))
                tq.grad = self.tdev(self.be.to_numpy(g))
                osgd = T.optim.SGD([tp], lr=1e-3, momentum=0.9)
                oadam = T.optim.Adam([tq], lr=1e-3)
                tsgd, tadam = osgd.step, oadam.step

            def sgd():
                self.be.sgd_update(p, g, buf, 1e-3, momentum=0.9)

            def adam():
                step["t"] += 1
                self.be.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, step["t"])
            # SGD momentum: read p, g, buf; write p, buf.  Adam: read p, g, m, v; write p, m, v
            self.run("SGD momentum step", f"{size:,} params", sgd, tsgd, nbytes=5 * 4 * size)
            self.run("Adam step", f"{size:,} params", adam, tadam, nbytes=7 * 4 * size)


def _row(r):
    t = r.get("torch")
    gb = r["nnx"].get("gb_per_s")
    return [r["op"], r["size"], harness.fmt_time(r["nnx"]), f"{gb:.1f}" if gb else "-",
            harness.fmt_time(t) if t else "-", harness.fmt_ratio(r.get("ratio"))]


def _flat(info):
    out = dict(info)
    th = out.pop("threads", None)
    if isinstance(th, dict):
        out["threads"] = th.get("requested")
    return out


if __name__ == "__main__":
    main()
