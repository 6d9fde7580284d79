"""The one model factory: every network of the toolkit is built here, from a run's config
(training) or from the `model` metadata saved beside its weights (evaluation, analysis,
inference). Both paths describe the network with the same dictionary, `model.config()`:

    {"stacks", "features", "joints", "depth"}                       the plain SHG
    + {"ae": {...BottleneckAE...}, "ae_stack": s, "task": "ae"}       AE phase 1 (frozen SHG)
    + {"ae": {...}, "ae_stack": s, "task": "pose_ae"}                 AE phase 2 (SHG with AE)
"""

from __future__ import annotations

from torch import nn

from .autoencoder import AEPhase1, BottleneckAE, SHGWithAE
from .hourglass import StackedHourglass


def describe(cfg) -> dict:
    """The architecture a run config asks for, as `model.config()` would report it
    (`cfg` is a shg.config.RunConfig)."""
    m = cfg.model
    spec = {"stacks": m.stacks, "features": m.features, "joints": m.joints, "depth": 4}
    if not m.skips:
        spec["skips"] = False
    if m.bottleneck_features:
        spec["bottleneck_features"] = m.bottleneck_features
    if cfg.task == "pose":
        return spec
    ae = {"features": m.bottleneck_features or m.features, "hidden": cfg.ae.hidden,
          "channels": cfg.ae.channels, "downsample": cfg.ae.downsample}
    if cfg.ae.output != "relu":
        ae["output"] = cfg.ae.output
    return {**spec, "ae": ae, "ae_stack": cfg.ae.stack % m.stacks, "task": cfg.task}


def build_model(spec: dict, *, init: str = "xavier_normal", zero_heads: bool = True,
                noise: float = 0.1, freeze_ae: bool = False) -> nn.Module:
    """The module `spec` describes, freshly initialised. The keyword arguments only matter for
    training (initialisation, the AE's denoising noise, a frozen AE in phase 2)."""
    spec = dict(spec)
    ae_spec, stack, task = spec.pop("ae", None), spec.pop("ae_stack", -1), spec.pop("task", "pose")
    shg = StackedHourglass(**spec, init=init, zero_heads=zero_heads)
    if ae_spec is None:
        return shg
    ae = BottleneckAE(**ae_spec)
    if task == "ae":
        return AEPhase1(shg, ae, stack, noise)
    return SHGWithAE(shg, ae, stack, freeze_ae)


def from_config(cfg) -> nn.Module:
    """The network of a run config (weights: fresh; see shg.training.setup for init_from)."""
    return build_model(describe(cfg), init=cfg.model.init, zero_heads=cfg.model.zero_heads,
                       noise=cfg.ae.noise, freeze_ae=cfg.ae.freeze_ae)


def from_metadata(spec: dict) -> nn.Module:
    """The network saved weights describe (their `model` metadata)."""
    return build_model(spec)
