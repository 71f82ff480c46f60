"""The golden bitstream: a tiny committed model, an image, its .lic and its decoded pixels (make_golden.py)."""
