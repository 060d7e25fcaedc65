"""data/shards: conversion end to end, read back by webdataset, tarfile, DALI and FFCV."""
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data.shards.convert import STATE, convert
from data.shards.manifest import load_manifest
from data.shards.plan import ConvertOptions
from data.sources import open_source


def run(src, out, **kw):
    kw.setdefault("shard_size", 4)
    return convert(open_source(str(src)), out, ConvertOptions(**kw), progress=False)


def wds_samples(out: Path) -> list[dict]:
    """Every sample of a WebDataset conversion, in manifest (= plan) order, via webdataset."""
    urls = [str(out / s["file"]) for s in load_manifest(out)["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


def beton_samples(path: Path) -> list[tuple[int, bytes]]:
    """(label, stored JPEG bytes) of every sample of a beton, read with FFCV's Reader."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    size_at = {int(p): int(s) for p, s in zip(reader.alloc_table["ptr"], reader.alloc_table["size"])}
    raw = path.read_bytes()
    out = []
    column = {name: reader.metadata[f"f{i}"] for i, name in enumerate(reader.field_names)}
    for label, ptr in zip(column["label"], column["image"]["data_ptr"]):
        out.append((int(label), raw[int(ptr):int(ptr) + size_at[int(ptr)]]))
    return out


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_input_is_written_or_listed_as_skipped(class_tree, tmp_path):
    out = tmp_path / "out"
    summary = run(class_tree.root, out, workers=2)
    fates = {path: fate for path, (_, fate) in class_tree.expected.items()}
    n_skip = sum(f == "skip" for f in fates.values())
    assert summary.complete
    assert (summary.num_read, summary.num_written, summary.num_skipped) == (len(fates), len(fates) - n_skip, n_skip)
    manifest = load_manifest(out)
    assert manifest["format"] == "webdataset" and manifest["classes"] == class_tree.classes
    assert manifest["num_samples"] == sum(s["num_samples"] for s in manifest["shards"]) == len(fates) - n_skip
    assert sorted(s["path"] for s in manifest["skipped"]) == sorted(p for p, f in fates.items() if f == "skip")
    assert all(s["reason"] for s in manifest["skipped"])
    assert manifest["options"]["max_side"] == 512 and manifest["options"]["quality"] == 90
    assert manifest["stats"]["passthrough"] == sum(f == "passthrough" for f in fates.values())
    assert manifest["stats"]["resized"] == sum(f == "resize" for f in fates.values())
    assert all(s["num_samples"] <= 4 for s in manifest["shards"])

    samples = wds_samples(out)
    assert len(samples) == manifest["num_samples"]
    for sample in samples:
        meta = json.loads(sample["json"])
        label, fate = class_tree.expected[meta["source"]]
        assert int(sample["cls"]) == label == meta["label"]
        assert meta["class"] == class_tree.classes[label]
        source_bytes = (class_tree.root / meta["source"]).read_bytes()
        assert (sample["jpg"] == source_bytes) == (fate == "passthrough") == meta["passthrough"]
        im = Image.open(io.BytesIO(sample["jpg"]))
        assert im.format == "JPEG" and im.mode == "RGB" and list(im.size) == meta["size"]
        assert max(im.size) <= 512 and list(Image.open(io.BytesIO(source_bytes)).size) == meta["source_size"]
        assert "." not in sample["__key__"]


def test_shards_are_plain_tars_of_key_cls_jpg_json(class_tree, tmp_path):
    out = tmp_path / "out"
    run(class_tree.root, out)
    for shard in load_manifest(out)["shards"]:
        with tarfile.open(out / shard["file"]) as tf:
            names = tf.getnames()
        assert len(names) == 3 * shard["num_samples"]
        keys = [n.rsplit(".", 1)[0] for n in names]
        assert all(keys[i] == keys[i + 1] == keys[i + 2] for i in range(0, len(keys), 3))
        assert [n.rsplit(".", 1)[1] for n in names[:3]] == ["cls", "jpg", "json"]
        assert (out / shard["index"]).read_text().startswith(f"v1.2 {shard['num_samples']}\n")


def test_dali_reads_the_shards_with_their_index_files(class_tree, tmp_path):
    from nvidia.dali import fn, pipeline_def, types

    out = tmp_path / "out"
    run(class_tree.root, out)
    manifest = load_manifest(out)
    tars = [str(out / s["file"]) for s in manifest["shards"]]
    idx = [str(out / s["index"]) for s in manifest["shards"]]

    @pipeline_def(batch_size=5, num_threads=1, device_id=None)
    def pipe():
        jpg, cls, meta = fn.readers.webdataset(paths=tars, index_paths=idx, ext=["jpg", "cls", "json"],
                                               missing_component_behavior="error", name="reader")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls, meta

    p = pipe()
    p.build()
    n = p.epoch_size("reader")
    assert n == manifest["num_samples"]
    labels, seen = Counter(), 0
    while seen < n:
        images, cls, meta = p.run()
        for i in range(min(len(images), n - seen)):
            info = json.loads(bytes(np.asarray(meta.at(i))))
            assert np.asarray(images.at(i)).shape == (info["size"][1], info["size"][0], 3)
            assert int(bytes(np.asarray(cls.at(i)))) == info["label"]
            labels[info["label"]] += 1
        seen += len(images)
    assert labels == Counter(json.loads(s["json"])["label"] for s in wds_samples(out))


def test_ffcv_beton_holds_the_same_samples_and_ffcvs_loader_reads_it(class_tree, tmp_path):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption

    run(class_tree.root, tmp_path / "wds")
    summary = run(class_tree.root, tmp_path / "ffcv", format="ffcv", workers=2)
    manifest = load_manifest(tmp_path / "ffcv")
    assert summary.complete and not (tmp_path / "ffcv" / STATE).exists()
    assert manifest["shards"] == [{"file": "data.beton", "num_samples": summary.num_written}]
    expected = [(int(s["cls"]), s["jpg"]) for s in wds_samples(tmp_path / "wds")]
    assert beton_samples(tmp_path / "ffcv" / "data.beton") == expected  # same bytes, same order

    loader = Loader(str(tmp_path / "ffcv" / "data.beton"), batch_size=4, num_workers=1,
                    order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [CenterCropRGBImageDecoder((32, 32), ratio=1.0)],
                               "label": [IntDecoder()]})
    labels = []
    for images, label in loader:
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
        labels += label.ravel().tolist()
    assert labels == [label for label, _ in expected]


def test_samples_are_shuffled_across_shards_by_seed(tmp_path):
    a = run("embedded:val", tmp_path / "a", shard_size=30)
    keys = lambda out: [s["__key__"] for s in wds_samples(out)]
    labels_per_shard = [len({int(s["cls"]) for s in list(wds.WebDataset(str(tmp_path / "a" / sh["file"]), shardshuffle=False))})
                        for sh in load_manifest(tmp_path / "a")["shards"]]
    assert a.shards_total == 10 and min(labels_per_shard) >= 5  # every shard mixes classes
    run("embedded:val", tmp_path / "b", shard_size=30)
    run("embedded:val", tmp_path / "c", shard_size=30, seed=1)
    assert keys(tmp_path / "a") == keys(tmp_path / "b") != keys(tmp_path / "c")
    assert sorted(keys(tmp_path / "a")) == sorted(keys(tmp_path / "c"))


def test_resume_writes_only_what_is_missing_and_ends_identical(class_tree, tmp_path):
    reference = tmp_path / "ref"
    run(class_tree.root, reference)
    out = tmp_path / "out"
    partial = run(class_tree.root, out, job_index=0, num_jobs=3)  # a third of the shards, no manifest
    assert not partial.complete and not (out / "manifest.json").exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    (out / "shard-000001.tar").write_bytes(b"half a shard, no record")       # killed mid-rename window
    (out / "shard-000000.tar.tmp-host-1").write_bytes(b"left by a killed run")
    resumed = run(class_tree.root, out)
    assert resumed.complete and resumed.images_this_run < len(class_tree.expected)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar") if p.name in done_before} == done_before
    assert folder_bytes(out) == folder_bytes(reference)


@pytest.mark.parametrize("fmt", ["webdataset", "ffcv"])
def test_split_jobs_add_up_to_a_single_run(class_tree, tmp_path, fmt):
    run(class_tree.root, tmp_path / "single", format=fmt)
    summaries = [run(class_tree.root, tmp_path / "jobs", format=fmt, job_index=j, num_jobs=3) for j in range(3)]
    assert [s.complete for s in summaries] == [False, False, True]
    single, jobs = folder_bytes(tmp_path / "single"), folder_bytes(tmp_path / "jobs")
    if fmt == "webdataset":
        assert jobs == single
    else:  # FFCV's writer places pages in worker order: compare what the beton holds
        assert jobs.keys() == single.keys() == {"manifest.json", "data.beton"}
        assert jobs["manifest.json"] == single["manifest.json"]
        assert beton_samples(tmp_path / "jobs" / "data.beton") == beton_samples(tmp_path / "single" / "data.beton")


def test_rerun_of_a_finished_conversion_does_nothing(tmp_path):
    run("embedded:val", tmp_path / "out", shard_size=100)
    before = folder_bytes(tmp_path / "out")
    again = run("embedded:val", tmp_path / "out", shard_size=100)
    assert again.already_complete and again.images_this_run == 0
    assert folder_bytes(tmp_path / "out") == before


def test_unlistable_tar_remainder_is_counted_as_skipped(synset_tars, tmp_path):
    out = tmp_path / "out"
    summary = run(synset_tars.root, out)
    manifest = load_manifest(out)
    # the cut member of the last tar is skipped; its other 4 members are kept
    assert (summary.num_read, summary.num_written, summary.num_skipped) == (15, 14, 1)
    assert manifest["skipped"][0]["path"] == "n10000003.tar/n10000003_4.JPEG"
    assert "cut short" in manifest["skipped"][0]["reason"]
    assert Counter(int(s["cls"]) for s in wds_samples(out)) == {0: 5, 1: 5, 2: 4}


def test_keys_are_unique_dotless_and_fit_a_ustar_name():
    from data.shards.plan import unique_keys
    from data.shards.webdataset import MAX_KEY_LEN

    paths = ["a/b.JPEG", "a_b.png", "a/b_2.JPEG", "x.tar/y.z.JPEG", "deep/" * 40 + "f.JPEG", "deep/" * 40 + "g.JPEG"]
    keys = unique_keys(paths)
    assert keys[:4] == ["a_b", "a_b_2", "a_b_2_2", "x_y_z"]
    assert len(set(keys)) == len(keys) and all("." not in k and len(k) <= MAX_KEY_LEN for k in keys)
    assert keys[4] != keys[5] and keys == unique_keys(paths)


def test_a_torn_shard_is_written_again(class_tree, tmp_path):
    """After a machine crash a renamed shard may hold fewer bytes than its record says."""
    reference, out = tmp_path / "ref", tmp_path / "out"
    run(class_tree.root, reference)
    run(class_tree.root, out, job_index=0, num_jobs=2)
    torn = out / "shard-000000.tar"
    torn.write_bytes(torn.read_bytes()[:700])
    run(class_tree.root, out)
    assert folder_bytes(out) == folder_bytes(reference)
