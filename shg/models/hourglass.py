"""Newell et al. (2016) Stacked Hourglass network, exactly as published.

    from shg.models import StackedHourglass
    model = StackedHourglass(stacks=8, features=256, joints=17)
    heatmaps = model(images)            # (N, stacks, joints, H/4, W/4)

Structure: stem (7x7 conv 3->64 stride 2 + BN + ReLU, Residual 64->128, max-pool, Residual
128->128, Residual 128->F), then per stack an Hourglass of depth 4, a Residual, a 1x1 conv +
BN + ReLU and a 1x1 conv to the K heatmaps; between stacks the features and the heatmaps are
re-mapped by 1x1 convs and added back (intermediate supervision). Residuals are pre-activation
bottlenecks (BN-ReLU-1x1 to F/2, BN-ReLU-3x3, BN-ReLU-1x1 to F) whose skip is a 1x1 conv only
when the channel count changes. Nothing is created that the forward pass does not use, so DDP
needs no find_unused_parameters and the parameter count matches the closed form
352,640 + n(3,069,696 + 257K) + (n-1)(66,048 + 256K) for F = 256.

Analysis hooks: the innermost (bottleneck) tensor of every hourglass can be read or replaced
(`bottleneck_hook`), and the skip (up) branch of each hourglass level can be switched off at
inference (`disable_skips`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

BottleneckHook = Callable[[int, torch.Tensor], torch.Tensor | None]


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (self.skip(x) if self.skip is not None else x)


class Hourglass(nn.Module):
    """One hourglass; `level` counts down to 1 at the innermost (4x4 for a 64x64 input).

    Ablations: `skips=False` builds no skip (up1) branches at all; `bottleneck` < features makes
    the innermost level narrower (F -> bottleneck -> F) instead of adding an autoencoder."""

    def __init__(self, level: int, features: int, skips: bool = True, bottleneck: int = 0):
        super().__init__()
        self.level = level
        inner = bottleneck or features
        self.up1 = Residual(features, features) if skips else None
        self.pool = nn.MaxPool2d(2, 2)
        self.low1 = Residual(features, features if level > 1 else inner)
        self.low2 = (Hourglass(level - 1, features, skips, bottleneck) if level > 1
                     else Residual(inner, inner))
        self.low3 = Residual(features if level > 1 else inner, features)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, ctx: "_Context") -> torch.Tensor:
        low = self.low1(self.pool(x))
        if self.level > 1:
            low = self.low2(low, ctx)
        else:
            low = ctx.bottleneck(self.low2(low))
        up2 = self.upsample(self.low3(low))
        if self.up1 is None or self.level in ctx.disabled:
            return up2
        return self.up1(x) + up2


class _Context:
    """Per-forward information handed down the hourglass recursion."""

    def __init__(self, model: "StackedHourglass", stack: int):
        self.model, self.stack = model, stack
        self.disabled = model.disabled_skips

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        hook = self.model.bottleneck_hook
        if hook is None:
            return x
        out = hook(self.stack, x)
        return x if out is None else out


class StackedHourglass(nn.Module):
    def __init__(self, stacks: int = 8, features: int = 256, joints: int = 17,
                 depth: int = 4, init: str = "xavier_normal", zero_heads: bool = True,
                 skips: bool = True, bottleneck_features: int = 0):
        super().__init__()
        if stacks < 1 or features < 2 or features % 2 or joints < 1 or depth < 1:
            raise ValueError("need stacks >= 1, an even features >= 2, joints >= 1, depth >= 1")
        if bottleneck_features < 0 or bottleneck_features % 2:
            raise ValueError("bottleneck_features must be 0 (= features) or an even number > 0")
        self.stacks, self.features, self.joints, self.depth = stacks, features, joints, depth
        self.skips, self.bottleneck_features = skips, bottleneck_features
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            Residual(64, 128), nn.MaxPool2d(2, 2), Residual(128, 128), Residual(128, features),
        )
        self.hourglasses = nn.ModuleList(Hourglass(depth, features, skips, bottleneck_features)
                                         for _ in range(stacks))
        self.features_out = nn.ModuleList(
            nn.Sequential(Residual(features, features), nn.Conv2d(features, features, 1),
                          nn.BatchNorm2d(features), nn.ReLU(inplace=True))
            for _ in range(stacks))
        self.heads = nn.ModuleList(nn.Conv2d(features, joints, 1) for _ in range(stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(features, features, 1)
                                            for _ in range(stacks - 1))
        self.merge_heatmaps = nn.ModuleList(nn.Conv2d(joints, features, 1)
                                            for _ in range(stacks - 1))
        self.bottleneck_hook: BottleneckHook | None = None
        self.disabled_skips: frozenset[int] = frozenset()
        self.reset_parameters(init, zero_heads)

    def reset_parameters(self, init: str = "xavier_normal", zero_heads: bool = True) -> None:
        """Glorot (Xavier) normal, the thesis default, or PyTorch's own ("default").

        zero_heads: the 1x1 convs that emit the heatmaps start at zero, so the network starts
        at the all-zero prediction. With Glorot weights everywhere, the summed hourglass
        branches make the initial heatmaps ~100x larger than the targets, and the first
        thousands of steps only shrink them; measured here, a 1-stack SHG then fits one batch
        (PCK 1.0) in 100 steps instead of staying near PCK 0.1."""
        if init not in ("xavier_normal", "default"):
            raise ValueError(f"init must be 'xavier_normal' or 'default', not {init!r}")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "xavier_normal":
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)
                else:
                    m.reset_parameters()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
        if zero_heads:
            for head in self.heads:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        outputs = []
        for i in range(self.stacks):
            y = self.hourglasses[i](x, _Context(self, i))
            y = self.features_out[i](y)
            heatmaps = self.heads[i](y)
            outputs.append(heatmaps)
            if i < self.stacks - 1:
                x = x + self.merge_features[i](y) + self.merge_heatmaps[i](heatmaps)
        return torch.stack(outputs, 1)

    # ------------------------------------------------------------------ analysis helpers

    @contextmanager
    def capture_bottleneck(self, stack: int | None = None) -> Iterator[list[torch.Tensor]]:
        """Collect the bottleneck tensors (one per stack, or only `stack`'s) of each forward."""
        captured: list[torch.Tensor] = []

        def hook(i: int, t: torch.Tensor) -> None:
            if stack is None or i == stack:
                captured.append(t.detach())

        previous, self.bottleneck_hook = self.bottleneck_hook, hook
        try:
            yield captured
        finally:
            self.bottleneck_hook = previous

    @contextmanager
    def disable_skips(self, levels) -> Iterator[None]:
        """Switch off the skip branch of the given hourglass levels (1 = innermost, `depth` =
        outermost) in every stack, for inference-time ablation."""
        levels = frozenset(int(v) for v in levels)
        bad = [v for v in levels if not 1 <= v <= self.depth]
        if bad:
            raise ValueError(f"skip levels must be in 1..{self.depth}, got {bad}")
        previous, self.disabled_skips = self.disabled_skips, levels
        try:
            yield
        finally:
            self.disabled_skips = previous

    @property
    def bottleneck_channels(self) -> int:
        return self.bottleneck_features or self.features

    def config(self) -> dict:
        spec = {"stacks": self.stacks, "features": self.features, "joints": self.joints,
                "depth": self.depth}
        if not self.skips:  # (written only when used: older readers know the plain SHG)
            spec["skips"] = False
        if self.bottleneck_features:
            spec["bottleneck_features"] = self.bottleneck_features
        return spec


def expected_parameters(stacks: int, joints: int = 17) -> int:
    """Closed-form parameter count for features=256, depth 4 (Newell's configuration)."""
    return 352_640 + stacks * (3_069_696 + 257 * joints) + (stacks - 1) * (66_048 + 256 * joints)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: StackedHourglass, size: int = 256) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass on a size x size image."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train(was_training)
    return counter.get_total_flops()
