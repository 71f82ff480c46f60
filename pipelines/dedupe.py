"""DVC stage dedupe: merged, training and evaluation manifests, and the report (params: data.dedupe)."""

from lic.data.dedupe import run_dedupe
from lic.params import load_params
from pipelines.stage import run

if __name__ == "__main__":
    run(lambda: run_dedupe(load_params()))
