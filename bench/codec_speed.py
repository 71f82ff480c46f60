"""Codec speed on the CPU: encode/decode time and peak memory for a 768x512 image, and where LoC-LIC's time goes.

Each learned codec runs in its own child process so that its peak memory is its own. Random weights are fine
for speed, as long as the entropy coder has a realistic amount of work: LoC-LIC's latent is scaled so that the
photo costs about 1 bpp, a trained model's high-rate point. Pillow codecs run on the same photo for scale. The
MACs of the encode and decode calls themselves are counted too, so that speed can be compared per MAC.
"""

from __future__ import annotations

import io
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage import data
from torch.utils.flop_counter import FlopCounterMode

from bench.common import Section, best_seconds, median_seconds, peak_rss_mib, table
from lic.codec.determinism import CODING_THREADS

HEIGHT, WIDTH = 512, 768
LEARNED = [
    ("loclic", {}),
    ("mlicpp", {}),
    ("mbt2018-mean", {"quality": 8}),
    ("mbt2018", {"quality": 8}),
    ("cheng2020-anchor", {"quality": 6}),
]
PILLOW = [("JPEG", {"quality": 75}), ("WEBP", {"quality": 75}), ("AVIF", {"quality": 60})]
COLUMNS = ["codec", "bpp", "encode ms", "decode ms", "encode / LoC-LIC", "decode / LoC-LIC", "decode GMAC",
           "decode GMAC/s", "peak MiB"]  # fmt: skip
LATENT_GAIN = 2.0  # on g_a's last conv of the random LoC-LIC (and MLIC++): about 0.9 bpp (1 gives 0.002, 3 gives 3)


def _photo() -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)


def _photo_tensor() -> torch.Tensor:
    return torch.from_numpy(np.array(_photo())).permute(2, 0, 1)[None].float() / 255


def _model(name: str, config: dict[str, Any]):
    from lic.models import build

    torch.manual_seed(0)
    model = build(name, **config).eval()
    if name in ("loclic", "mlicpp"):
        with torch.no_grad():
            model.g_a[-1].weight.mul_(LATENT_GAIN)
    model.update(force=True)
    return model


def _macs(call: Callable[[], Any]) -> float:
    """Multiply-accumulates of one call (convolutions, matrix multiplies), counted as lic.complexity does."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:  # not inference mode, as lic.codec has: the counter needs autograd nodes
        call()
    return counter.get_total_flops() / 2


def _learned(name: str, config: dict[str, Any]) -> dict[str, float]:
    """Runs in a child process: median encode and decode seconds, their MACs, stream bytes, peak RSS."""
    from lic import codec

    after_imports = peak_rss_mib()
    model = _model(name, config)
    x = _photo_tensor()
    coded = codec.compress(model, x)  # also the encoder's warm-up
    timed = {
        "encode_s": median_seconds(lambda: codec.compress(model, x), warmup=0),
        "decode_s": median_seconds(lambda: codec.decompress(model, coded)),
        "peak_rss_mib": peak_rss_mib(),  # before counting: the counter keeps its own tensors
    }
    return {
        "import_rss_mib": after_imports,
        **timed,
        "encode_gmac": _macs(lambda: model.compress(x)) / 1e9,
        "decode_gmac": _macs(lambda: model.decompress([[s] for s in coded.streams], coded.latent_shape)) / 1e9,
        "bytes": sum(len(s) for s in coded.streams),
    }


def _pillow(fmt: str, options: dict[str, Any]) -> dict[str, float]:
    photo = _photo()

    def encode() -> bytes:
        buffer = io.BytesIO()
        photo.save(buffer, fmt, **options)
        return buffer.getvalue()

    encoded = encode()  # also the encoder's warm-up
    return {
        "encode_s": median_seconds(encode, repeats=5, warmup=0),
        "decode_s": median_seconds(lambda: Image.open(io.BytesIO(encoded)).load(), repeats=5),
        "bytes": len(encoded),
    }


def _profile_loclic() -> dict[str, dict[str, float]]:
    """Seconds spent in each top-level part of LoC-LIC during one encode and one decode (forward hooks), coded on
    one core: on two, some parts run side by side (lic.models.halves) and their times would overlap."""
    from lic import codec
    from lic.models.halves import run_halves_concurrently

    run_halves_concurrently(False)  # this child process only
    model = _model("loclic", {})
    x = _photo_tensor()
    spent: dict[str, float] = defaultdict(float)
    started: dict[int, float] = {}

    def pre(module, _):
        started[id(module)] = time.perf_counter()

    def post(name):
        def hook(module, _, __):
            spent[name] += time.perf_counter() - started.pop(id(module))

        return hook

    for name, child in model.named_children():
        for module in child if isinstance(child, torch.nn.ModuleList) else [child]:
            module.register_forward_pre_hook(pre)
            module.register_forward_hook(post(name))
    coded = codec.compress(model, x)  # warm-up
    profile = {}
    for phase, fn in (("encode", lambda: codec.compress(model, x)), ("decode", lambda: codec.decompress(model, coded))):
        spent.clear()
        start = time.perf_counter()
        fn()
        total = time.perf_counter() - start
        profile[phase] = {**dict(spent), "rANS coding and glue": total - sum(spent.values()), "total": total}
    return profile


def _throughput() -> dict[str, float]:
    """LoC-LIC forward GMAC/s against this machine's fp32 matrix-multiply rate with the same threads."""
    from lic.complexity import measure

    model = _model("loclic", {})
    macs = measure(model, HEIGHT, WIDTH).kmac_per_pixel * 1e3 * HEIGHT * WIDTH
    x = torch.rand(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        forward_s = median_seconds(lambda: model(x))
    n = 4096
    a, b = torch.rand(n, n), torch.rand(n, n)
    matmul_s = best_seconds(lambda: a @ b)
    return {
        "threads": torch.get_num_threads(),
        "forward_s": forward_s,
        "forward_gmacs": macs / forward_s / 1e9,
        "matmul_gmacs": n**3 / matmul_s / 1e9,
    }


def _per_mac(results: dict[str, dict[str, float]]) -> str:
    """The time-per-MAC comparison: is LoC-LIC slower than its MAC count implies?"""
    rate = {label: r["decode_gmac"] / r["decode_s"] for label, r in results.items() if "decode_gmac" in r}
    ours, peer = rate["loclic"], rate["mbt2018-mean q8"]
    verdict = "no slower than" if ours >= peer else f"{peer / ours:.2f}x slower than"
    return (
        f"Per MAC, LoC-LIC decodes at {ours:.1f} GMAC/s, {verdict} mbt2018-mean ({peer:.1f} GMAC/s), the "
        "hyperprior baseline without a serial context model."
    )


def _decode_ratio(results: dict[str, dict[str, float]]) -> str:
    """The decoder target of issue 19: LoC-LIC decodes at least 10x faster than cheng2020-anchor q6."""
    ratio = results["cheng2020-anchor q6"]["decode_s"] / results["loclic"]["decode_s"]
    mlicpp = results["mlicpp"]["decode_s"] / results["loclic"]["decode_s"]
    return (
        f"LoC-LIC decodes {ratio:.1f}x faster than cheng2020-anchor q6 (target: 10x) and {mlicpp:.1f}x faster than "
        "MLIC++ (the same entropy model with 192-channel transforms). LoC-LIC and MLIC++ compute each convolution "
        "in two output-channel halves, on both cores (lic.models.halves); the CompressAI baselines code on one."
    )


def run() -> Section:
    context = multiprocessing.get_context("spawn")
    results: dict[str, dict[str, float]] = {}
    for name, config in LEARNED:
        label = name + (f" q{config['quality']}" if config else "")
        with context.Pool(1) as pool:
            results[label] = pool.apply(_learned, (name, config))
    for fmt, options in PILLOW:
        results[f"{fmt} (Pillow, q{options['quality']})"] = _pillow(fmt, options)
    base = results["loclic"]
    rows = []
    for label, r in results.items():
        learned = "peak_rss_mib" in r
        rows.append(
            [label, f"{r['bytes'] * 8 / (WIDTH * HEIGHT):.2f}",
             f"{r['encode_s'] * 1e3:.0f}", f"{r['decode_s'] * 1e3:.0f}",
             f"{r['encode_s'] / base['encode_s']:.2f}", f"{r['decode_s'] / base['decode_s']:.2f}",
             f"{r['decode_gmac']:.1f}" if learned else "-",
             f"{r['decode_gmac'] / r['decode_s']:.1f}" if learned else "-",
             f"{r['peak_rss_mib'] - r['import_rss_mib']:.0f}" if learned else "-"]
        )  # fmt: skip
    with context.Pool(1) as pool:
        profile = pool.apply(_profile_loclic)
        throughput = pool.apply(_throughput)
    parts = sorted(profile["decode"], key=lambda k: -profile["decode"][k])
    profile_rows = [[p, f"{profile['encode'].get(p, 0) * 1e3:.0f}", f"{profile['decode'][p] * 1e3:.0f}"] for p in parts]
    markdown = (
        f"{WIDTH}x{HEIGHT} photo, median of 3 runs after a warm-up (5 for Pillow), each learned codec in its own "
        "process; its peak memory is the peak RSS above what the process had after importing torch and lic "
        f"(about {base['import_rss_mib']:.0f} MiB, mostly the CUDA build of torch). Ratios are to LoC-LIC.\n\n"
        + table(COLUMNS, rows)
        + "\n\nDecode GMAC counts the decode call itself (autoregressive decoders run their masked convolution per "
        "latent position, which the count includes); GMAC/s compares how well each decoder uses the CPU. "
        f"{_per_mac(results)} {_decode_ratio(results)}\n"
        + "\n\n**Where LoC-LIC's time goes** (forward hooks on each top-level part, per-slice modules summed; coded on "
        "one core, so that the parts add up: on two, some of them run side by side):\n\n"
        + table(["part", "encode ms", "decode ms"], profile_rows)
        + f"\n\n**Throughput**: LoC-LIC's forward pass runs at {throughput['forward_gmacs']:.1f} GMAC/s "
        f"({throughput['forward_s'] * 1e3:.0f} ms at {WIDTH}x{HEIGHT}, {throughput['threads']} torch threads; coding "
        f"itself runs on {CODING_THREADS}, see docs/model.md); the best fp32 4096x4096 matrix multiply with "
        f"the same threads reaches {throughput['matmul_gmacs']:.1f} GMAC/s, so the model runs at "
        f"{throughput['forward_gmacs'] / throughput['matmul_gmacs']:.0%} of this machine's practical peak."
    )
    return Section("Codec speed (CPU)", markdown, {"codecs": results, "profile": profile, "throughput": throughput})
