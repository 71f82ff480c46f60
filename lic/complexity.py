"""Complexity accounting: true multiply-accumulates of the whole forward pass, per pixel and per module.

The counter is `torch.utils.flop_counter.FlopCounterMode`, which counts the FLOPs of convolutions (transposed
ones at their true cost), matrix multiplications and attention; MACs = FLOPs / 2. Element-wise work
(activations, GDN's square root, softmax) and the entropy coder are not counted, as in the literature. The pass
is the eval-mode `forward`: transforms, hyperprior and the whole entropy model (every slice, both checkerboard
halves, LRP). thop-style counters give the same value for LoC-LIC (no transposed convolutions) and higher values
for the Ballé/Minnen baselines, whose transposed convolutions they count at output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

COUNTER = "torch.utils.flop_counter (true MACs = FLOPs / 2)"


@dataclass(frozen=True)
class Complexity:
    model: str
    height: int
    width: int
    kmac_per_pixel: float
    parameters: int
    modules: dict[str, float]  # kMAC per pixel of each top-level part (ModuleLists summed over slices)
    module_parameters: dict[str, int]
    counter: str = COUNTER

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def measure(model: nn.Module, height: int = 256, width: int | None = None, name: str | None = None) -> Complexity:
    """Count the MACs of one eval-mode forward pass on a random height x width image."""
    width = width or height
    pixels = height * width
    model = model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        model(torch.rand(1, 3, height, width))
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def kmac(prefix: str) -> float:
        return sum(counts.get(prefix, {}).values()) / 2 / pixels / 1e3

    modules, module_parameters = {}, {}
    for child_name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            value = sum(kmac(f"{root}.{child_name}.{i}") for i in range(len(child)))
        else:
            value = kmac(f"{root}.{child_name}")
        modules[child_name] = round(value, 3)
        module_parameters[child_name] = sum(p.numel() for p in child.parameters())
    spec = getattr(model, "spec", None)
    return Complexity(
        model=name or (spec.name if spec else root),
        height=height,
        width=width,
        kmac_per_pixel=round(counter.get_total_flops() / 2 / pixels / 1e3, 3),
        parameters=sum(p.numel() for p in model.parameters()),
        modules=modules,
        module_parameters=module_parameters,
    )
