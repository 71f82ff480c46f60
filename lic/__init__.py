"""LoC-LIC: a low-complexity learned image codec and the pipeline that trains, evaluates and registers it."""

__version__ = "0.1.0"
