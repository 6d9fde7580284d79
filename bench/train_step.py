"""Training-step benchmark: img/s of forward + backward + optimizer step at 256x256.

    .venv/bin/python bench/train_step.py [--stacks 1 2 8] [--batch 8] [--iters 3] [--no-compile]
        [--device auto|cpu|cuda] [--peak-tflops T] [--data-json data.json]

Side by side in one run, per stack count: a plain SHG written the usual way (the popular
PyTorch port's layout: every Residual owns a skip conv even when it is unused, default memory
format, fp32) as the baseline, and this project's model in fp32 / channels_last / bf16
autocast / torch.compile combinations. Prints img/s, the ratio to the baseline and, on CUDA,
the model FLOP utilisation (3 x forward FLOPs per image per step, over --peak-tflops: the
GPU's dense bf16 peak, 989 for an H100 SXM by default). With --data-json (the output of
`bench/data.py --json`) it also prints how many loader workers one GPU needs to be fed, for
each augmentation path. GPU usage: `--device cuda --batch 32 --stacks 2 8 --iters 20`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from shg.models import StackedHourglass, forward_flops
from shg.losses import heatmap_loss


# ------------------------------------------------------------------ the baseline, "as usual"
class PlainResidual(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout // 2, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout // 2), nn.Conv2d(cout // 2, cout // 2, 3, 1, 1)
        self.bn3, self.conv3 = nn.BatchNorm2d(cout // 2), nn.Conv2d(cout // 2, cout, 1)
        self.relu = nn.ReLU()
        self.skip_layer = nn.Conv2d(cin, cout, 1)  # created always, used only if cin != cout
        self.need_skip = cin != cout

    def forward(self, x):
        residual = self.skip_layer(x) if self.need_skip else x
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + residual


class PlainHourglass(nn.Module):
    def __init__(self, n, f):
        super().__init__()
        self.up1 = PlainResidual(f, f)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.low1 = PlainResidual(f, f)
        self.n = n
        self.low2 = PlainHourglass(n - 1, f) if n > 1 else PlainResidual(f, f)
        self.low3 = PlainResidual(f, f)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        up1 = self.up1(x)
        low2 = self.low2(self.low1(self.pool1(x)))
        return up1 + self.up2(self.low3(low2))


class PlainSHG(nn.Module):
    def __init__(self, nstack, f=256, k=17):
        super().__init__()
        self.nstack = nstack
        self.pre = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(),
                                 PlainResidual(64, 128), nn.MaxPool2d(2, 2),
                                 PlainResidual(128, 128), PlainResidual(128, f))
        self.hgs = nn.ModuleList(PlainHourglass(4, f) for _ in range(nstack))
        self.features = nn.ModuleList(nn.Sequential(PlainResidual(f, f), nn.Conv2d(f, f, 1),
                                                    nn.BatchNorm2d(f), nn.ReLU())
                                      for _ in range(nstack))
        self.outs = nn.ModuleList(nn.Conv2d(f, k, 1) for _ in range(nstack))
        self.merge_features = nn.ModuleList(nn.Conv2d(f, f, 1) for _ in range(nstack - 1))
        self.merge_preds = nn.ModuleList(nn.Conv2d(k, f, 1) for _ in range(nstack - 1))

    def forward(self, x):
        x = self.pre(x)
        preds = []
        for i in range(self.nstack):
            feature = self.features[i](self.hgs[i](x))
            preds.append(self.outs[i](feature))
            if i < self.nstack - 1:
                x = x + self.merge_preds[i](preds[-1]) + self.merge_features[i](feature)
        return torch.stack(preds, 1)


def measure(model, batch, iters, bf16, channels_last, compile_, device="cpu"):
    model.train().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=2.5e-4)
    step_model = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, 256, 256, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.rand(batch, 17, 64, 64, device=device)
    weights = torch.ones(batch, 17, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = step_model(x)
        loss = heatmap_loss(out, target, weights)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (and compilation)
    if compile_:
        step()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return batch * iters / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stacks", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's dense bf16 peak, TFLOP/s (H100 SXM: 989)")
    parser.add_argument("--data-json", help="output of `bench/data.py --json` (loader rates)")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    where = torch.cuda.get_device_name() if device == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, batch {args.batch}, "
          f"256x256, RMSProp, {args.iters} timed steps after warm-up")
    data = json.loads(Path(args.data_json).read_text()) if args.data_json else None
    fastest = 0.0
    variants = [("baseline: usual port, fp32", "plain", False, False, False),
                ("shg fp32", "shg", False, False, False),
                ("shg fp32 channels_last", "shg", False, True, False),
                ("shg bf16", "shg", True, False, False),
                ("shg bf16 channels_last", "shg", True, True, False)]
    if not args.no_compile:
        variants += [("shg fp32 channels_last compile", "shg", False, True, True),
                     ("shg bf16 channels_last compile", "shg", True, True, True)]
    for stacks in args.stacks:
        print(f"\nstacks = {stacks}")
        flops = 3 * forward_flops(StackedHourglass(stacks), 256)  # per image and step
        print(f"  {'variant':<34}{'img/s':>9}{'vs baseline':>13}"
              + (f"{'MFU':>8}" if device == "cuda" else ""))
        base = None
        for name, kind, bf16, cl, comp in variants:
            torch.manual_seed(0)
            model = PlainSHG(stacks) if kind == "plain" else StackedHourglass(stacks)
            rate = measure(model, args.batch, args.iters, bf16, cl, comp, device)
            base = base or rate
            fastest = max(fastest, rate)
            mfu = rate * flops / (args.peak_tflops * 1e12)
            print(f"  {name:<34}{rate:>9.2f}{rate / base:>12.2f}x"
                  + (f"{100 * mfu:>7.1f}%" if device == "cuda" else ""), flush=True)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    if data:
        loader, device_path = (data["reader_samples_per_s"],
                               data["reader_decode_only_worker_samples_per_s"])
        print(f"\nloader workers needed per GPU at the fastest rate ({fastest:.0f} img/s): "
              f"{math.ceil(fastest / loader)} with augment_on=loader ({loader:.0f} samples/s "
              f"per worker), {math.ceil(fastest / device_path)} with augment_on=device "
              f"({device_path:.0f} samples/s per worker)")


if __name__ == "__main__":
    main()
