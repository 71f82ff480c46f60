"""Coding on two cores without giving up bit-exactness: every convolution as two output-channel halves.

Coding is pinned to one thread per operation (lic.codec.determinism), because an operation split across
threads by torch sums in an order that depends on the thread count. Splitting a convolution by output channels
instead changes no sum in principle: each output channel is the same reduction over the same inputs whichever
half computes it. In practice the CPU library picks its kernel by problem size, so a half can round differently
from the whole convolution (bit-identical for every LoC-LIC convolution on an AMD EPYC; on an AVX-512 Xeon the
1x1 entropy-parameter convolutions, 832 or 960 -> 320 channels at 192+ positions, differ by up to 3e-8). The
halves are therefore part of the coding arithmetic: they are always computed as two calls, whether at the same
time on two threads or one after the other, which is only a matter of speed, and a forward pass that must equal
the decoder's output runs under `convolutions_in_halves` too. `--jobs` workers run them
one after the other, since their siblings already use the other cores.

Between convolutions a coder also has work that only one core would do: LocalContext's attention, the gathers,
the activations. `side_by_side` runs two independent parts of the model at the same time instead, one on each
thread, each computing its convolutions' halves one after the other: the same arithmetic again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from typing import TypeVar

import torch
from torch import Tensor, nn

MIN_HALF = 8  # output channels of each half; smaller convolutions are not worth a thread hand-over
_concurrent = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) > 1
_thread = threading.local()  # .coding: this thread runs a coder; .alone: the other thread is busy, halves in turn
First, Second = TypeVar("First"), TypeVar("Second")


def run_halves_concurrently(enabled: bool) -> bool:
    """Whether this process computes the two halves at the same time (default: when it has two cores or more).
    Returns the previous setting."""
    global _concurrent
    previous, _concurrent = _concurrent, enabled
    return previous


@cache
def _second_lane() -> ThreadPoolExecutor:
    """The thread that computes the second half, on one torch thread like the coding thread (the setting is per
    thread under OpenMP)."""
    return ThreadPoolExecutor(1, thread_name_prefix="lic-lane", initializer=torch.set_num_threads, initargs=(1,))


def _half(conv: nn.Conv2d, x: Tensor, channels: slice) -> Tensor:
    with torch.inference_mode():  # grad mode is per thread: the lane thread must not record autograd either
        bias = None if conv.bias is None else conv.bias[channels]
        return conv._conv_forward(x, conv.weight[channels], bias)


def _split_forward(conv: nn.Conv2d, x: Tensor) -> Tensor:
    middle = conv.out_channels // 2
    first, second = slice(0, middle), slice(middle, None)
    if _concurrent and not getattr(_thread, "alone", False):
        pending = _second_lane().submit(_half, conv, x, second)
        return torch.cat([_half(conv, x, first), pending.result()], dim=1)
    return torch.cat([_half(conv, x, first), _half(conv, x, second)], dim=1)


def _alone(part: Callable[[], First]) -> First:
    """`part` with this thread's convolutions computing their halves in turn (the other thread is busy)."""
    previous, _thread.alone = getattr(_thread, "alone", False), True
    try:
        with torch.inference_mode():  # as in _half: the lane thread must not record autograd
            return part()
    finally:
        _thread.alone = previous


def side_by_side(first: Callable[[], First], second: Callable[[], Second]) -> tuple[First, Second]:
    """(first(), second()) of two independent parts: while this thread codes on two cores, `second` runs on the
    lane thread as `first` runs here; otherwise (training, one core) one after the other."""
    if not (_concurrent and getattr(_thread, "coding", False)) or getattr(_thread, "alone", False):
        return first(), second()
    pending = _second_lane().submit(_alone, second)
    try:
        here = _alone(first)
    finally:
        there = pending.result()  # waited for even when `first` failed: the lane is free again when we return
    return here, there


def splittable(module: nn.Module) -> bool:
    """Plain, ungrouped convolutions with enough output channels (subclasses may override forward: left alone)."""
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.out_channels % 2 == 0
        and module.out_channels >= 2 * MIN_HALF
    )


_patching = threading.Lock()
_coders: dict[int, int] = {}  # id(model) -> how many codings of it are under way (threads may share a model)


@contextmanager
def convolutions_in_halves(model: nn.Module) -> Iterator[None]:
    """While coding: every splittable convolution of `model` computes its output channels in two halves."""
    with _patching:
        if not _coders.get(id(model)):
            for conv in filter(splittable, model.modules()):
                conv.forward = _split_forward.__get__(conv)
        _coders[id(model)] = _coders.get(id(model), 0) + 1
    coding, _thread.coding = getattr(_thread, "coding", False), True
    try:
        yield
    finally:
        _thread.coding = coding
        with _patching:
            _coders[id(model)] -= 1
            if not _coders[id(model)]:
                del _coders[id(model)]
                for conv in filter(splittable, model.modules()):
                    del conv.forward
