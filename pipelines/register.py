"""DVC stage register: every lambda becomes a version of its registered model; the gate moves champion."""

from lic.registry.register import register_lambdas
from pipelines.stage import run

if __name__ == "__main__":
    run(register_lambdas)
