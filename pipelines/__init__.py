"""Thin DVC stage entry points over the `lic` library: each reads its section of params.yaml and calls lic."""
