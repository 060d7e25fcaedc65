"""data/ffcv_ops.py: one decode per image, every view of every group, read by FFCV's Loader."""
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from data.ffcv_ops import MultiCropRGBImageDecoder, split_views
from data.shards.convert import convert
from data.shards.plan import ConvertOptions
from data.sources import open_source


@pytest.fixture(scope="module")
def beton(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("ffcvops")
    (root / "src" / "n0").mkdir(parents=True)
    for i in range(12):
        images.photo(128, 96, i).save(root / "src" / "n0" / f"{i}.JPEG", quality=95)
    convert(open_source(str(root / "src")), root / "out", ConvertOptions(format="ffcv"), progress=False)
    return root / "out" / "data.beton"


def _loader(path, groups, batch=4):
    from ffcv.fields.decoders import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    return Loader(str(path), batch_size=batch, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                  pipelines={"image": [MultiCropRGBImageDecoder(groups), ToTensor()], "label": [IntDecoder(), ToTensor()]})


def test_views_of_every_group_come_from_one_decode(beton):
    groups = [(64, 2, (0.25, 1.0), (3 / 4, 4 / 3)), (32, 3, (0.05, 0.25), (3 / 4, 4 / 3))]
    rows, labels = next(iter(_loader(beton, groups)))
    assert rows.shape == (4, 2 * 64 * 64 * 3 + 3 * 32 * 32 * 3) and rows.dtype == torch.uint8
    views = split_views(rows, groups)
    assert [len(g) for g in views] == [2, 3]
    assert views[0][0].shape == (4, 3, 64, 64) and views[1][2].shape == (4, 3, 32, 32)
    assert not torch.equal(views[0][0], views[0][1])  # independent crops


def test_a_full_image_crop_equals_opencvs_area_resize_of_the_decoded_jpeg(beton):
    from data.shards.samples import BetonSamples

    groups = [(32, 2, (1.0, 1.0), (128 / 96, 128 / 96))]  # the whole image, at its own aspect ratio
    rows, _ = next(iter(_loader(beton, groups, batch=12)))
    views = split_views(rows, groups)[0]
    samples = BetonSamples(beton.parent)
    for b in range(12):
        decoded = np.asarray(Image.open(__import__("io").BytesIO(samples.read(b)[0])).convert("RGB"))
        expected = cv2.resize(decoded, (32, 32), interpolation=cv2.INTER_AREA)
        shifted = cv2.resize(decoded[8:, 8:], (32, 32), interpolation=cv2.INTER_AREA)  # a wrong crop
        for v in views:
            got = v[b].permute(1, 2, 0).numpy().astype(int)
            # FFCV decodes with TurboJPEG's own IDCT/upsampling settings: a few levels apart from Pillow
            assert np.abs(got - expected).mean() < 1.5 and np.abs(got - expected).max() <= 12
            assert np.abs(got - shifted.astype(int)).mean() > 3 * np.abs(got - expected).mean()


def test_simple_resized_crop_is_a_shorter_side_square(beton):
    from data.shards.samples import BetonSamples

    groups = [(32, 1, (1.0, 1.0), (1.0, 1.0), "src")]
    rows, _ = next(iter(_loader(beton, groups, batch=12)))
    view = split_views(rows, groups)[0][0]
    samples = BetonSamples(beton.parent)
    for b in range(12):
        decoded = np.asarray(Image.open(__import__("io").BytesIO(samples.read(b)[0])).convert("RGB"))  # 96 x 128
        squares = [cv2.resize(decoded[:, j:j + 96], (32, 32), interpolation=cv2.INTER_AREA).astype(int)
                   for j in range(0, 33)]
        got = view[b].permute(1, 2, 0).numpy().astype(int)
        assert min(np.abs(got - sq).mean() for sq in squares) < 1.5  # some shorter-side square, resized
