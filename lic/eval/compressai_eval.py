"""`python -m lic.eval.compressai_eval`: CompressAI's own `compressai.utils.eval_model`, knowing lic's models.

    python -m lic.eval.compressai_eval checkpoint IMAGES/ -a loclic -p outputs/train/l0130/model.pt

CompressAI 1.2.8 looks architectures up in tables filled when `compressai.zoo` is imported and loads no plugins,
so this module imports `lic.models` (which adds our architectures, lic.models.compressai_hooks) and then runs
CompressAI's module unchanged as `__main__`, with the same arguments and output. Its numbers are CompressAI's:
bpp of the entropy-coded streams alone (no .lic header), PSNR and MS-SSIM of the 8-bit RGB reconstruction, zero
padding centred (lic pads by edge replication; both agree on images whose sides are multiples of 64).
"""

import runpy

import lic.models  # noqa: F401  (registers our architectures with CompressAI)

if __name__ == "__main__":
    runpy.run_module("compressai.utils.eval_model", run_name="__main__", alter_sys=True)
