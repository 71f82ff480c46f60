"""DVC stage train@<key>: train (or resume) the model of lambda <key> with Ray Train (params: lambdas.<key>, train)."""

import sys

from lic.params import load_params
from lic.train.driver import train
from pipelines.stage import run

if __name__ == "__main__":
    run(lambda: train(load_params(), key=sys.argv[1]))
