"""Evaluation: real-bitstream rate and quality of checkpoints and classical anchors, and the RD report.

evalset.py (the images), metrics.py (bpp, PSNR, MS-SSIM), measure.py (one loop for every codec), evaluate.py
(a checkpoint), anchors.py (JPEG, WebP, AVIF), reference.py (published points), bd.py (Bjøntegaard deltas),
plots.py and report.py. docs/evaluation.md describes the outputs.
"""
