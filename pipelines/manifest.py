"""DVC stage manifest@<source>: decode and hash one fetched source into its Parquet manifest."""

import sys

from lic.data.manifest import build_manifest
from pipelines.stage import run

if __name__ == "__main__":
    run(build_manifest, *sys.argv[1:])
