"""The one place that makes entropy coding reproducible.

The decoder recomputes every context, scale and mean the encoder used; a single float that differs can move a
scale to another CDF table and desynchronise the rANS stream. On the CPU the same build of torch gives the same
results for the same shapes; on CUDA, cuDNN autotuning and TF32 must be off. Encoding and decoding must still
run on the same kind of device (CPU with CPU, same GPU model with same GPU model): cross-device decoding is not
guaranteed by any learned codec built on float arithmetic.
"""

from __future__ import annotations

import torch


def make_deterministic() -> None:
    """Switch off the nondeterministic fast paths that matter for coding (idempotent)."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
