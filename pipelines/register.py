"""DVC stage register: each lambda's checkpoint and evaluation become a registered model version (params: registry)."""

from lic.params import load_params
from lic.registry.register import register_lambdas
from pipelines.stage import run

if __name__ == "__main__":
    run(lambda: register_lambdas(load_params()))
