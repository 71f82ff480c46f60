"""DVC stage train@<key>: train (or resume) the model of lambda <key> with Ray Train."""

import sys

from lic.train.driver import train
from pipelines.stage import run

if __name__ == "__main__":
    run(train, *sys.argv[1:])
