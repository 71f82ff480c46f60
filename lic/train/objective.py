"""Rate-distortion objective and optimisers, taken from CompressAI rather than rewritten.

`RateDistortionLoss` is CompressAI's: `lmbda * 255**2 * MSE + bpp` with x in [0, 1] (the scaling the MLIC++
lambdas assume), or `lmbda * (1 - MS-SSIM) + bpp` with pytorch-msssim at data_range 1. The auxiliary loss
(`model.aux_loss()`) fits the EntropyBottleneck quantiles and has its own optimiser.
"""

from __future__ import annotations

from compressai.losses import RateDistortionLoss
from compressai.optimizers import net_aux_optimizer
from torch import nn, optim

__all__ = ["RateDistortionLoss", "make_optimizers"]


def make_optimizers(model: nn.Module, lr: float, aux_lr: float) -> tuple[optim.Optimizer, optim.Optimizer]:
    """Adam for the network and Adam for the quantiles only (params: train.lr, train.aux_lr); the two parameter
    sets are disjoint."""
    optimizers = net_aux_optimizer(model, {"net": {"type": "Adam", "lr": lr}, "aux": {"type": "Adam", "lr": aux_lr}})
    return optimizers["net"], optimizers["aux"]
