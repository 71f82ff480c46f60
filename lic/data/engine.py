"""Where the data stages run their parallel work: the Ray cluster named by RAY_ADDRESS, else a local Ray.

A local Ray is started for the block and stopped after it, with every CPU of this machine and a small object
store (the stages move tables and file names through it, never pixels). On a cluster, every node needs this
project installed and the data folders on shared storage (docs/datasets.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

LOCAL_OBJECT_STORE_BYTES = 512 * 2**20


@contextmanager
def ray_session() -> Iterator[None]:
    """Ray for the block: the running session if there is one, the RAY_ADDRESS cluster, or a local Ray."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    settings = {"logging_level": logging.WARNING, "configure_logging": True, "log_to_driver": True}
    if address:
        ray.init(address=address, **settings)
    else:
        ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **settings)
    try:
        yield
    finally:
        ray.shutdown()
