"""Reading the shard set's .beton files: random crops through FFCV's loader, whole samples by direct access.

The format facts both sides share live here (the field name, how FFCV must read the field back); writing is
`lic.data.beton_writer`, which imports this module and never the other way round. Training imports only this.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from ffcv.fields import RGBImageField
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.reader import Reader
from ffcv.transforms import ToTensor

IMAGE = "image"  # the .beton's only field
# FFCV records a field's class in the file; ours only chooses the storage per sample, so it reads as RGBImageField.
CUSTOM_FIELDS = {IMAGE: RGBImageField}
JPEG_MODE = IMAGE_MODES["jpg"]


class StoredSamples:
    """Direct access to the samples of one .beton, without FFCV's loader: what each holds and its pixels.

    The validation images, the PyTorch backend and the index of the shard stage read samples this way; a JPEG
    sample is decoded exactly (OpenCV), where FFCV's loader uses TurboJPEG's fast IDCT.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        reader = Reader(str(self.path), custom_handlers=CUSTOM_FIELDS)
        self.fields = reader.metadata["f0"]  # per sample: mode, width, height, data_ptr
        table = reader.alloc_table
        sizes = dict(zip(table["ptr"].tolist(), table["size"].tolist(), strict=True))
        self.bytes = np.array([sizes[int(ptr)] for ptr in self.fields["data_ptr"]], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.fields)

    def is_jpeg(self, row: int) -> bool:
        return int(self.fields["mode"][row]) == JPEG_MODE

    def pixels(self, row: int) -> np.ndarray:
        """uint8 H x W x 3 RGB of sample `row`."""
        field = self.fields[row]
        data = np.fromfile(self.path, np.uint8, count=int(self.bytes[row]), offset=int(field["data_ptr"]))
        if self.is_jpeg(row):
            return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return data.reshape(int(field["height"]), int(field["width"]), 3)


def _random_square(height, width, side, _unused):
    """(row, column, side, side) of a uniformly placed square: FFCV's crop-and-resize then only crops."""
    row = np.random.randint(0, height - side + 1)
    column = np.random.randint(0, width - side + 1)
    return row, column, side, side


class RandomCropDecoder(ResizedCropRGBImageDecoder):
    """side x side random crops at native resolution; every selected image must be at least that big."""

    def __init__(self, side: int) -> None:
        super().__init__((side, side))
        self.scale = side  # what FFCV hands the crop generator as its third argument
        self.ratio = 0.0

    @property
    def get_crop_generator(self):
        return _random_square


class FfcvCrops:
    """uint8 B x S x S x 3 batches of random crops of one size from one .beton, one pass over `indices` at a time.

    `distributed` splits every pass between the ranks of the initialised torch.distributed group (FFCV uses a
    DistributedSampler). `workers` is FFCV's thread count, which FFCV also applies to torch's intra-op threads.
    The last batch of a pass may be short (the loader joins the shards' batches into full ones). FFCV compiles
    the pipeline at a loader's first pass and keeps it; decoding buffers live only during a pass.
    """

    def __init__(
        self,
        beton: Path,
        side: int,
        batch_size: int,
        indices: np.ndarray,
        *,
        workers: int,
        seed: int,
        distributed: bool,
    ) -> None:
        self.loader = Loader(
            str(beton),
            batch_size=batch_size,
            num_workers=workers,
            order=OrderOption.RANDOM,  # QUASI_RANDOM refuses distributed=True
            distributed=distributed,
            seed=seed,
            indices=indices,
            pipelines={IMAGE: [RandomCropDecoder(side), ToTensor()]},
            custom_fields=CUSTOM_FIELDS,
            drop_last=False,
        )

    def batches(self, pass_index: int) -> Iterator[torch.Tensor]:
        """The batches of one pass; its order depends only on (seed, pass_index). Each batch is a view of FFCV's
        buffer, valid until the next few batches are made: copy it before keeping it."""
        self.loader.next_epoch = pass_index
        iterator = iter(self.loader)
        try:
            for (images,) in iterator:
                yield images
        finally:
            iterator.close()
