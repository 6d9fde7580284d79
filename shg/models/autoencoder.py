"""Denoising autoencoder at the hourglass bottleneck (the thesis' "improving the model").

Where: the innermost 4x4xF tensor of ONE hourglass, the last stack's by default (`ae.stack`).
The last stack's bottleneck is the one whose information reaches the final heatmaps without
a later hourglass to correct it, so it is where a cleaner representation can matter; earlier
stacks can be chosen for the ablation.

Shape: encoder conv3x3 F->hidden + ReLU, conv3x3 hidden->channels (stride 2 when `downsample`:
4x4 -> 2x2, so the latent holds channels x 2 x 2 numbers, e.g. 64x2x2 = 256 for F = 256's
4096), decoder back to F x 4 x 4 with a **ReLU output** (as the thesis): reconstructions are
non-negative like the SHG's ReLU features. (The bottleneck Residual's own output is a sum and
can dip below zero; those entries are reconstructed as 0, which the reconstruction error
reports honestly.)

Denoising: in training the input is x + N(0, (factor * x)^2), i.e. x + factor * x * eps: noise
proportional to the activation.

Phase 1 (`AEPhase1`): the SHG is frozen (eval mode, no gradients), the AE learns to reconstruct
the clean bottleneck from the noisy one (MSE). Phase 2 (`SHGWithAE`): the AE is inserted at the
bottleneck and the whole network (or the SHG with the AE frozen) trains with the pose loss.
"""

from __future__ import annotations

import torch
from torch import nn

from .hourglass import StackedHourglass


class BottleneckAE(nn.Module):
    OUTPUTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "linear": nn.Identity}

    def __init__(self, features: int = 256, hidden: int = 128, channels: int = 64,
                 downsample: bool = True, output: str = "relu"):
        super().__init__()
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {list(self.OUTPUTS)}, not {output!r}")
        self.features, self.hidden, self.channels, self.downsample = (features, hidden,
                                                                      channels, downsample)
        self.output = output
        stride = 2 if downsample else 1
        self.encoder = nn.Sequential(
            nn.Conv2d(features, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 3, stride=stride, padding=1), nn.ReLU(inplace=True))
        up = (nn.ConvTranspose2d(channels, hidden, 2, stride=2) if downsample
              else nn.Conv2d(channels, hidden, 3, padding=1))
        self.decoder = nn.Sequential(up, nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, features, 3, padding=1),
                                     # relu (the thesis): the output lives where the features
                                     # live; sigmoid and linear for the committee's question
                                     self.OUTPUTS[output]())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def config(self) -> dict:
        spec = {"features": self.features, "hidden": self.hidden, "channels": self.channels,
                "downsample": self.downsample}
        if self.output != "relu":
            spec["output"] = self.output
        return spec


def add_proportional_noise(x: torch.Tensor, factor: float,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, (factor * x)^2), element-wise."""
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + factor * x * eps


class AEPhase1(nn.Module):
    """Frozen SHG + trainable AE: forward returns (reconstruction of the noisy latent, clean
    latent) for the chosen stack."""

    def __init__(self, shg: StackedHourglass, ae: BottleneckAE, stack: int = -1,
                 noise: float = 0.1):
        super().__init__()
        self.shg, self.ae = shg, ae
        self.stack, self.noise = stack % shg.stacks, noise
        for p in self.shg.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.shg.eval()  # frozen: BatchNorm statistics must not move either
        return self

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.shg.capture_bottleneck(self.stack) as seen:
            self.shg(images)
        return seen[0].float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clean = self.latents(images)
        noisy = add_proportional_noise(clean, self.noise) if self.training else clean
        return self.ae(noisy), clean

    def config(self) -> dict:
        return {**self.shg.config(), "ae": self.ae.config(), "ae_stack": self.stack,
                "task": "ae"}


class SHGWithAE(nn.Module):
    """An SHG whose chosen stack's bottleneck passes through the AE."""

    def __init__(self, shg: StackedHourglass, ae: BottleneckAE, stack: int = -1,
                 freeze_ae: bool = False):
        super().__init__()
        self.shg, self.ae, self.stack = shg, ae, stack % shg.stacks
        self.freeze_ae = freeze_ae
        for p in self.ae.parameters():
            p.requires_grad_(not freeze_ae)

    def _through_ae(self, i: int, t: torch.Tensor) -> torch.Tensor | None:
        return self.ae(t) if i == self.stack else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        previous, self.shg.bottleneck_hook = self.shg.bottleneck_hook, self._through_ae
        try:
            return self.shg(images)
        finally:
            self.shg.bottleneck_hook = previous

    # the analysis helpers of the plain model
    @property
    def stacks(self) -> int:
        return self.shg.stacks

    @property
    def depth(self) -> int:
        return self.shg.depth

    def disable_skips(self, levels):
        return self.shg.disable_skips(levels)

    def capture_bottleneck(self, stack=None):
        return self.shg.capture_bottleneck(stack)

    def config(self) -> dict:
        return {**self.shg.config(), "ae": self.ae.config(), "ae_stack": self.stack,
                "task": "pose_ae"}

