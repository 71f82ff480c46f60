"""Datasets: fetch raw sources, describe every image in a Parquet manifest, and deduplicate the training set.

Stages (dvc.yaml): fetch@<source> -> manifest@<source> -> dedupe. Formats and the DVC workflow: docs/datasets.md.
Modules import their heavy dependencies themselves, so `import lic.data` stays cheap for the CLI.
"""
