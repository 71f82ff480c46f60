"""`python -m bench.gpu`: first light on a GPU machine, with torch, compressai and pytorch-msssim only.

The GPU machines lent to the project have torch but none of the pipeline's orchestration (Ray, FFCV, MLflow,
DVC), so this imports nothing beyond the model, the codec and the RD objective (tests/test_bench_gpu.py checks
the import path). Within about 8 minutes on one GPU it measures:

1. train-step throughput of the real LoC-LIC (N 32/64/128, M 320) on random 256 x 256 crops, batch 8 and 16,
   fp32 and bfloat16 autocast (the loop's `train.amp`), and checks that every loss is finite and that the bf16
   losses stay within `BF16_TOLERANCE` of fp32's over `AGREEMENT_STEPS` steps from the same weights and batches;
2. a 2-process DDP run over nccl when the machine has 2 or more GPUs (else it says so);
3. entropy coding a 768 x 512 image on the GPU: the same bytes twice, and the decoded image equal to the eval
   forward pass (what validation measures) within `DECODE_TOLERANCE`;
4. peak GPU memory of each part.

It refuses with one line when there is no CUDA device. Results: a Markdown table on stdout and JSON in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from lic.codec.core import compress, decompress
from lic.models import build
from lic.train.objective import RateDistortionLoss, make_optimizers

CROP = 256
BATCHES = (8, 16)
TIMED_STEPS = 10  # after WARMUP_STEPS untimed ones (cuDNN autotuning, allocator growth)
WARMUP_STEPS = 3
AGREEMENT_STEPS = 10
BF16_TOLERANCE = 0.05  # |loss_bf16 - loss_fp32| / loss_fp32 at each of the AGREEMENT_STEPS steps
DECODE_TOLERANCE = 1e-4  # max |decoded - eval forward| in [0, 1] pixels (8-bit levels are 3.9e-3 apart)
CODED_SIZE = (512, 768)  # height, width: a Kodak image
LMBDA = 0.0130
LR, AUX_LR = 1e-4, 1e-3  # params.yaml's train.lr and train.aux_lr (this script reads no params: torch only)


def images(batch: int, side: int, seed: int, device: torch.device) -> Tensor:
    """Smooth random images (blurred noise plus gradients): like photographs to the entropy model, unlike white
    noise, whose rate would dominate every loss."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, side // 16, side // 16, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    fine = 0.05 * torch.rand(batch, 3, side, side, generator=generator)
    return (smooth + fine).clamp(0, 1).to(device)


def train_steps(
    model: nn.Module, batch: int, steps: int, amp: bool, device: torch.device, seed: int = 0, side: int = CROP
) -> tuple[list[float], float]:
    """`steps` training steps of the loop's shape (forward, RD loss in fp32, backward, clip, step, aux step);
    returns the losses and the wall time of all steps (the GPU waited for)."""
    optimizer, aux_optimizer = make_optimizers(model, LR, AUX_LR)
    criterion = RateDistortionLoss(lmbda=LMBDA)
    batches = [images(batch, side, seed + i, device) for i in range(steps)]
    losses = []
    synchronise(device)
    start = time.perf_counter()
    for x in batches:
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            output = model(x)
        output = {
            "x_hat": output["x_hat"].float(),
            "likelihoods": {k: v.float() for k, v in output["likelihoods"].items()},
        }
        loss = criterion(output, x)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        aux = model.aux_loss()
        aux.backward()
        aux_optimizer.step()
        losses.append(loss.item())
    synchronise(device)
    return losses, time.perf_counter() - start


def throughput(
    config: dict[str, Any], batch: int, amp: bool, device: torch.device, steps: int = TIMED_STEPS, side: int = CROP
) -> dict[str, Any]:
    """Samples per second of the timed steps, and the peak memory of the whole measurement."""
    torch.manual_seed(0)
    model = build("loclic", **config).to(device).train()
    reset_peak(device)
    precision = "bf16 autocast" if amp else "fp32"
    try:
        warm, _ = train_steps(model, batch, WARMUP_STEPS, amp, device, seed=100, side=side)
        losses, seconds = train_steps(model, batch, steps, amp, device, seed=200, side=side)
    except RuntimeError as err:  # reported, so the other measurements still run
        return {"batch": batch, "precision": precision, "finite": False, "error": str(err).splitlines()[0]}
    return {
        "batch": batch,
        "precision": precision,
        "samples_per_s": batch * steps / seconds,
        "step_s": seconds / steps,
        "finite": all(math.isfinite(loss) for loss in warm + losses),
        "peak_memory_gib": peak_gib(device),
    }


def bf16_agreement(
    config: dict[str, Any], batch: int, device: torch.device, steps: int = AGREEMENT_STEPS, side: int = CROP
) -> dict[str, Any]:
    """fp32 and bf16 runs from the same weights on the same batches: the largest relative loss difference."""
    runs = {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = build("loclic", **config).to(device).train()
        try:
            runs[amp], _ = train_steps(model, batch, steps, amp, device, seed=300, side=side)
        except RuntimeError as err:  # reported, so the other measurements still run
            return {"steps": steps, "tolerance": BF16_TOLERANCE, "ok": False, "error": str(err).splitlines()[0]}
    worst = max(abs(b - f) / abs(f) for f, b in zip(runs[False], runs[True], strict=True))
    return {
        "steps": steps,
        "fp32_losses": runs[False],
        "bf16_losses": runs[True],
        "max_relative_difference": worst,
        "tolerance": BF16_TOLERANCE,
        "ok": worst <= BF16_TOLERANCE and all(math.isfinite(v) for v in runs[False] + runs[True]),
    }


def codec_round_trip(config: dict[str, Any], device: torch.device, size: tuple[int, int] = CODED_SIZE) -> dict:
    """Encode twice and decode once on `device`; compare the bytes and the decode with the eval forward pass."""
    torch.manual_seed(0)
    model = build("loclic", **config).to(device).eval()
    model.update(force=True)
    height, width = size
    generator = torch.Generator().manual_seed(7)
    coarse = torch.rand(1, 3, height // 16, width // 16, generator=generator)
    x = nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1).to(device)
    reset_peak(device)
    synchronise(device)
    start = time.perf_counter()
    first = compress(model, x)
    synchronise(device)
    encode_s = time.perf_counter() - start
    second = compress(model, x)
    start = time.perf_counter()
    decoded = decompress(model, first)
    synchronise(device)
    decode_s = time.perf_counter() - start
    with torch.inference_mode():
        forward = model(x)["x_hat"].clamp(0, 1)
    difference = (decoded - forward).abs().max().item()
    num_bytes = sum(len(stream) for stream in first.streams)
    return {
        "size": f"{width}x{height}",
        "bytes": num_bytes,
        "bpp": num_bytes * 8 / (height * width),
        "same_bytes_twice": first.streams == second.streams,
        "decode_vs_forward_max_abs": difference,
        "tolerance": DECODE_TOLERANCE,
        "ok": first.streams == second.streams and difference <= DECODE_TOLERANCE,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "peak_memory_gib": peak_gib(device),
    }


def ddp_worker(rank: int, world_size: int, port: int, config: dict[str, Any], batch: int, queue: Any) -> None:
    """One rank of the nccl run: timed steps, then a check that every rank holds the same weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    try:
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        torch.manual_seed(0)
        model = build("loclic", **config).to(device).train()
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank], broadcast_buffers=False)
        ddp.aux_loss = model.aux_loss  # train_steps calls it; DDP does not forward attributes
        train_steps(ddp, batch, WARMUP_STEPS, False, device, seed=100 + 1000 * rank)
        losses, seconds = train_steps(ddp, batch, TIMED_STEPS, False, device, seed=200 + 1000 * rank)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        spread = flat.clone()
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        spread -= flat
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        if rank == 0:
            queue.put(
                {"seconds": seconds, "finite": all(map(math.isfinite, losses)), "weights_spread": spread.max().item()}
            )
    finally:
        dist.destroy_process_group()


def ddp_run(config: dict[str, Any], batch: int) -> dict[str, Any]:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return {"skipped": f"{gpus} GPU on this machine: DDP over nccl needs 2 or more"}
    world_size = 2
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(ddp_worker, args=(world_size, port, config, batch, queue), nprocs=world_size, join=True)
    result = queue.get()
    return {
        "world_size": world_size,
        "batch_per_rank": batch,
        "samples_per_s": world_size * batch * TIMED_STEPS / result["seconds"],
        "finite": result["finite"],
        "weights_spread": result["weights_spread"],
        "ok": result["finite"] and result["weights_spread"] == 0.0,
    }


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def markdown(results: dict[str, Any]) -> str:
    lines = [f"GPU: {results['gpu']} x {results['gpus']}, torch {results['torch']} (CUDA {results['cuda']})", ""]
    lines += ["| batch | precision | samples/s | s/step | finite | peak GiB |", "|---|---|---|---|---|---|"]
    for row in results["throughput"]:
        if "error" in row:
            lines.append(f"| {row['batch']} | {row['precision']} | failed: {row['error']} | | False | |")
            continue
        lines.append(
            f"| {row['batch']} | {row['precision']} | {row['samples_per_s']:.1f} | {row['step_s']:.3f} | "
            f"{row['finite']} | {row['peak_memory_gib']:.2f} |"
        )
    agreement = results["bf16_agreement"]
    if "error" in agreement:
        lines += ["", f"bf16 vs fp32: bf16 training failed: {agreement['error']}"]
    else:
        lines += ["", f"bf16 vs fp32 over {agreement['steps']} steps: max relative loss difference "
                  f"{agreement['max_relative_difference']:.4f} (tolerance {agreement['tolerance']}): "
                  f"{'ok' if agreement['ok'] else 'FAILED'}"]  # fmt: skip
    ddp = results["ddp"]
    lines.append(f"DDP: {ddp['skipped']}" if "skipped" in ddp else
                 f"DDP nccl x{ddp['world_size']}: {ddp['samples_per_s']:.1f} samples/s, weights equal on every "
                 f"rank: {ddp['weights_spread'] == 0.0}")  # fmt: skip
    coded = results["codec"]
    lines.append(
        f"Codec {coded['size']} on the GPU: {coded['bytes']} bytes ({coded['bpp']:.3f} bpp, untrained weights), "
        f"same bytes twice: {coded['same_bytes_twice']}, decode vs forward max |diff| "
        f"{coded['decode_vs_forward_max_abs']:.2e}; encode {coded['encode_s']:.2f} s, "
        f"decode {coded['decode_s']:.2f} s, peak {coded['peak_memory_gib']:.2f} GiB"
    )
    lines.append(f"Total {results['seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-bench.json"), help="Where the JSON results go.")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"bench.gpu: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "run it on a GPU machine",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    device = torch.device("cuda", 0)
    config: dict[str, Any] = {}  # the registry's default: the paper's LoC-LIC (N 32/64/128, M 320, 10 slices)
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "throughput": [throughput(config, batch, amp, device) for batch in BATCHES for amp in (False, True)],
        "bf16_agreement": bf16_agreement(config, BATCHES[0], device),
        "ddp": ddp_run(config, BATCHES[0]),
        "codec": codec_round_trip(config, device),
    }
    results["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    checks = [row["finite"] for row in results["throughput"]]
    checks += [results["bf16_agreement"]["ok"], results["codec"]["ok"], results["ddp"].get("ok", True)]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
