"""bench/gpu.py on a machine without a GPU: it refuses in one line, imports none of the orchestration stack, and
its measurements are right on the CPU with a tiny model (the GPU run itself is for a lent GPU machine)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

from bench import gpu
from tests.data_support import ROOT, tool_env

TINY = {"N": [8, 8, 16], "M": 40, "slices": 2}


def test_without_cuda_it_refuses_in_one_line() -> None:
    env = {**tool_env(), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "bench.gpu"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("bench.gpu: no CUDA device") and result.stderr.count("\n") == 1


def test_it_needs_only_torch_compressai_and_pytorch_msssim() -> None:
    probe = "import sys, json, bench.gpu; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert {"torch", "compressai"} <= loaded
    assert not loaded & {"ray", "ffcv", "mlflow", "dvc"}  # not on the GPU machine (pyarrow, numba: compressai's)


def test_the_measurements_on_the_cpu_with_a_tiny_model() -> None:
    cpu = torch.device("cpu")
    row = gpu.throughput(TINY, batch=2, amp=False, device=cpu, steps=2, side=64)  # bf16 convolutions crawl on CPUs
    assert row["finite"] and row["samples_per_s"] > 0 and row["peak_memory_gib"] is None
    agreement = gpu.bf16_agreement(TINY, batch=2, device=cpu, steps=2, side=64)
    if "error" in agreement:  # today: LocalContext writes bf16 attention into a float32 buffer under autocast
        assert not agreement["ok"] and "dtypes match" in agreement["error"]
    else:
        assert len(agreement["fp32_losses"]) == len(agreement["bf16_losses"]) == 2
        assert math.isfinite(agreement["max_relative_difference"])
    coded = gpu.codec_round_trip(TINY, cpu, size=(128, 192))
    assert coded["same_bytes_twice"] and coded["decode_vs_forward_max_abs"] <= gpu.DECODE_TOLERANCE and coded["ok"]
    assert coded["bytes"] > 0 and coded["size"] == "192x128"
