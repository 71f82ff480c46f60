"""DVC stage evaluate@<key>: code the evaluation images with lambda <key>'s checkpoint."""

import sys

from lic.eval.evaluate import evaluate_rate_point
from pipelines.stage import run

if __name__ == "__main__":
    run(evaluate_rate_point, *sys.argv[1:])
