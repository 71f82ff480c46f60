"""DVC stage shard: the deduplicated training images into the shard set."""

from lic.data.shards import build_shards
from pipelines.stage import run

if __name__ == "__main__":
    run(build_shards)
