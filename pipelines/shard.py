"""DVC stage shard: the training manifest becomes FFCV shards, their metadata and the validation list."""

from lic.data.shards import build_shards
from lic.params import load_params
from pipelines.stage import run

if __name__ == "__main__":
    run(lambda: build_shards(load_params()))
