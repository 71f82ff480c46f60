"""Training: one LoC-LIC model per rate-distortion lambda, with Ray Train on one machine or a cluster.

`settings` turns params.yaml and a lambda into one run's settings, `loop` is what every Ray worker runs,
`driver` starts Ray and the `TorchTrainer` and writes the stage outputs. Details: docs/training.md.
"""
