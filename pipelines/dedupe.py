"""DVC stage dedupe: merge the active sources, drop leaked evaluation images and duplicates."""

from lic.data.dedupe import run_dedupe
from pipelines.stage import run

if __name__ == "__main__":
    run(run_dedupe)
