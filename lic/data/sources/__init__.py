"""Source adapters, one module each, chosen per source by `adapter:` in params.yaml (data.sources).

Each module has `fetch(settings, staging, context) -> dict`: it fills `staging/<split>/...` with raw images
(split `train` or `eval`) and returns provenance for source.json. lic.data.fetch moves the result into place.
"""
