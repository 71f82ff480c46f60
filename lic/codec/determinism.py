"""The one place that makes entropy coding reproducible.

The decoder recomputes every context, scale and mean the encoder used; a single float that differs can move a
scale to another CDF table and desynchronise the rANS stream. CPU kernels (oneDNN convolutions, matrix
multiplies) split their reductions by thread, so results change with the number of threads: measured here, the
same stream decoded with 1 and with 2 threads differed by up to 9e-7. torch's default thread count is the
machine's core count, so a file encoded on a 16-core server would not decode bit-exactly on a 2-core laptop.
Coding therefore runs on a fixed number of threads, whatever the machine. On CUDA, cuDNN autotuning and TF32
must be off. Encoding and decoding must still run on the same kind of device (CPU with CPU, same GPU model with
same GPU model) and the same torch build: cross-device decoding is not guaranteed by any learned codec built on
float arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

CODING_THREADS = 1  # part of the format's contract: changing it changes reconstructions (and may desync streams)


@contextmanager
def deterministic() -> Iterator[None]:
    """Switch off the nondeterministic fast paths and pin the thread count while coding; restore the threads."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    threads = torch.get_num_threads()
    torch.set_num_threads(CODING_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
