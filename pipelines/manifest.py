"""DVC stage manifest@<source>: decode and hash one fetched source into its Parquet manifest."""

import sys

from lic.data.manifest import build_manifest
from lic.params import load_params
from pipelines.stage import run

if __name__ == "__main__":
    run(lambda: build_manifest(sys.argv[1], load_params()))
