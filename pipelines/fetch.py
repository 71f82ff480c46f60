"""DVC stage fetch@<source>: obtain, verify and place one source (params: data.sources.<source>, profile)."""

import sys

from lic.data.fetch import fetch_source
from pipelines.stage import run

if __name__ == "__main__":
    run(fetch_source, *sys.argv[1:])
