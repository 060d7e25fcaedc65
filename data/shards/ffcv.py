"""FFCV betons written from our WebDataset part tars with FFCV's own ``DatasetWriter``.

The converter prepares every sample once (pass-through or re-encoded JPEG, see
data/images.py) into resumable part tars; this module streams those parts, in plan order,
through ``DatasetWriter.from_webdataset`` into ``data.beton``. Fields:

- ``image``: ``RGBImageField`` in ``jpg`` mode holding *our* JPEG bytes. FFCV's stock
  encoder would decode-free re-encode from pixels with OpenCV, which would lose the
  byte-for-byte pass-through and make the two formats differ; so this one field instance
  gets an encoder that copies the bytes and fills the same metadata (mode, width, height,
  data_ptr). The file declares a plain RGBImageField, and FFCV's decoders read it as such.
- ``label``: ``IntField``.

Sample i of the beton is sample i of the plan (part 0's samples, then part 1's, ...).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

BETON = "data.beton"


def _store_jpeg(destination, value, malloc) -> None:
    """RGBImageField.encode for ((jpeg bytes, width, height)): store the bytes as they are."""
    jpeg, width, height = value
    destination["mode"] = 0  # ffcv.fields.rgb_image.IMAGE_MODES["jpg"]
    destination["width"], destination["height"] = width, height
    destination["data_ptr"], storage = malloc(len(jpeg))
    storage[:] = np.frombuffer(jpeg, dtype=np.uint8)


def _to_fields(sample: dict) -> tuple:
    width, height = json.loads(sample["json"])["size"]
    return (sample["jpg"], width, height), int(sample["cls"])


def _pipeline(dataset):
    return dataset.map(_to_fields)


def write_beton(parts: list[Path], out_path: Path, workers: int) -> int:
    """Write `parts` (WebDataset tars) into the beton `out_path` atomically; returns #samples."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    image = RGBImageField(write_mode="jpg")
    image.encode = _store_jpeg  # instance attribute: the beton still records an RGBImageField
    tmp = out_path.with_name(f"{out_path.name}.tmp-{os.getpid()}")
    writer = DatasetWriter(str(tmp), {"image": image, "label": IntField()},
                           num_workers=max(1, workers))
    with warnings.catch_warnings():  # FFCV opens each part with WebDataset's defaults, which warn
        warnings.filterwarnings("ignore", message=".*shardshuffle.*")  # (inherited by its workers)
        writer.from_webdataset([str(p) for p in parts], _pipeline)
    num_samples = int(writer.num_samples)
    os.replace(tmp, out_path)
    return num_samples
