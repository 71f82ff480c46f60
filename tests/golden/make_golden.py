"""Regenerate the golden bitstream: `python -m tests.golden.make_golden` (from the project root).

Run it only when a change is *meant* to alter the coded bytes or the decoded pixels (a new bitstream or model
version): the golden test exists to catch every other such change. It writes, next to this file:
- `image.png`: a 192 x 128 crop of scikit-image's astronaut (shipped in its wheel);
- `image.lic`: what `lic.codec.encode` makes of it with the golden model, and `decoded.png`: what
  `lic.codec.decode` gives back;
- `weights.sha256`: the digest of the golden model's parameters, so a change of the model itself is told apart
  from a change of the codec;
- `machine.json`: the torch build, CPU vendor and CPU capability it was recorded with. Float arithmetic is the
  same only on the same kind of CPU and torch build (lic.codec.determinism), so the test compares where those
  match. The vendor counts: MKL chooses its matrix-multiply code path by it (on the AMD EPYC the stream was
  recorded on, `MKL_VERBOSE` names the generic "Intel(R) Architecture processors" path; an Intel CPU gets the
  path of the extensions it has).

The golden model is the real LoC-LIC architecture at its smallest (N = 8, 8, 16; M = 40; 2 slices). Its context
and parameter networks keep the official fixed widths (224, 192, 128), so even this model has 3.4 M parameters,
13.7 MB as a file: too big to commit. Its parameters are therefore generated, not stored: uniform in +-1/sqrt(fan
in) (torch's default bound) from the raw 64-bit output of NumPy's PCG64 bit generator, which NumPy keeps stable
across releases (NEP 19), unlike torch's initialisers. g_a's last layer is scaled so the latent costs bits.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import torch
from compressai.models import CompressionModel
from PIL import Image
from skimage import data

from bench.common import cpuinfo
from lic import codec
from lic.models import build

HERE = Path(__file__).resolve().parent
TINY = {"N": [8, 8, 16], "M": 40, "slices": 2}
SEED = 2026
LATENT_GAIN = 40.0  # on g_a's last layer: a random model's latent is otherwise almost all zeros


def golden_model() -> CompressionModel:
    """The tiny model with the generated parameters and its coder tables built, in eval mode."""
    model = build("loclic", **TINY)
    bits = np.random.PCG64(SEED)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            fan_in = parameter[0].numel() if parameter.dim() > 1 else parameter.numel()
            unit = bits.random_raw(parameter.numel()).astype(np.float64) / 2.0**64  # [0, 1)
            values = (2 * unit - 1) / np.sqrt(fan_in)
            if name.startswith("entropy_bottleneck."):
                if ".biases." not in name:
                    continue  # quantiles, matrices and factors start at constants, not random values
                values = unit - 0.5  # CompressAI draws the density's biases uniform in +-0.5
            parameter.copy_(torch.from_numpy(values.reshape(parameter.shape)).to(parameter.dtype))
        model.g_a[-1].weight.mul_(LATENT_GAIN)
    model.update(force=True)
    return model.eval()


def parameters_digest(model: CompressionModel) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode() + parameter.detach().numpy().tobytes())
    return digest.hexdigest()


def machine() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "cpu_vendor": cpu_vendor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def cpu_vendor() -> str:
    """The CPU's vendor as Linux names it (AuthenticAMD, GenuineIntel), or the architecture elsewhere."""
    return cpuinfo("vendor_id") or platform.machine()


def main() -> None:
    model = golden_model()
    pixels = np.ascontiguousarray(data.astronaut()[20:148, 150:342])
    Image.fromarray(pixels).save(HERE / "image.png")
    stream = codec.encode(pixels, model)
    (HERE / "image.lic").write_bytes(stream)
    codec.decode(stream, model).save(HERE / "decoded.png")
    (HERE / "weights.sha256").write_text(parameters_digest(model) + "\n")
    (HERE / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")
    print(f"{len(stream)} bytes ({8 * len(stream) / pixels.shape[0] / pixels.shape[1]:.2f} bpp)")


if __name__ == "__main__":
    main()
