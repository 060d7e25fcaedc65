"""data/shards/samples.py: random access by global id agrees with sequential readers."""
import pytest
import webdataset as wds

from data.shards.convert import convert
from data.shards.manifest import load_manifest
from data.shards.plan import ConvertOptions
from data.shards.samples import BetonSamples, SampleError, WebDatasetSamples, open_samples
from data.sources import open_source


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    source = open_source("embedded:val")
    for fmt in ("webdataset", "ffcv"):
        convert(source, root / fmt, ConvertOptions(format=fmt, shard_size=70), progress=False)
    return root


def test_webdataset_random_access_matches_the_webdataset_library(converted):
    folder = converted / "webdataset"
    urls = [str(folder / s["file"]) for s in load_manifest(folder)["shards"]]
    expected = [(s["jpg"], int(s["cls"]), s["__key__"]) for s in wds.WebDataset(urls, shardshuffle=False)]
    samples = open_samples(folder)
    assert isinstance(samples, WebDatasetSamples) and len(samples) == len(expected) == 300
    assert samples.counts == [70, 70, 70, 70, 20]
    for i in (0, 69, 70, 151, 299):
        assert samples.read(i) == expected[i]


def test_beton_random_access_holds_the_same_bytes_in_the_same_order(converted):
    tar, beton = open_samples(converted / "webdataset"), open_samples(converted / "ffcv")
    assert isinstance(beton, BetonSamples) and len(beton) == 300
    for i in range(0, 300, 37):
        jpeg, label, _ = tar.read(i)
        assert beton.read(i) == (jpeg, label, str(i))


def test_a_shard_shorter_than_its_index_names_the_shard_and_key(converted, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(converted / "webdataset", folder)
    tar = folder / "shard-000004.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    with pytest.raises(SampleError, match="shard-000004.tar is shorter than its index says"):
        WebDatasetSamples(folder).read(299)
    (folder / "shard-000001.idx").write_text("v1.2 3\n")
    with pytest.raises(SampleError, match="shard-000001.idx does not describe 70 samples"):
        WebDatasetSamples(folder)
