"""Networks: Newell's Stacked Hourglass (hourglass.py), the bottleneck autoencoder
(autoencoder.py) and the one factory that builds either (factory.py)."""

from .autoencoder import AEPhase1, BottleneckAE, SHGWithAE, add_proportional_noise
from .factory import build_model, describe, from_config, from_metadata
from .hourglass import StackedHourglass, count_parameters, forward_flops

__all__ = ["AEPhase1", "BottleneckAE", "SHGWithAE", "StackedHourglass", "add_proportional_noise",
           "build_model", "count_parameters", "describe", "forward_flops", "from_config",
           "from_metadata"]
