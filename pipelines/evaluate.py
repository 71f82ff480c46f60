"""DVC stage evaluate@<key>: code the evaluation images with lambda <key>'s checkpoint (params: evaluate)."""

import sys
from pathlib import Path

from lic.eval.evaluate import evaluate_checkpoint
from lic.params import load_params
from pipelines.stage import run


def main(key: str) -> None:
    params = load_params()
    evaluate_checkpoint(
        Path(params["train"]["outputs"]) / key / "model.pt",
        params["data"]["paths"]["eval"],
        Path(params["evaluate"]["out_dir"]) / key,
        setting=key,
        complexity_size=params["evaluate"]["complexity_size"],
    )


if __name__ == "__main__":
    run(lambda: main(sys.argv[1]))
