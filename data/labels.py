"""Label files of ImageNet as shipped, read into {image name: synset}.

Accepted for ``--val-labels``:

- ``LOC_val_solution.csv`` (Kaggle / ILSVRC localisation): ``ImageId,PredictionString``;
  the synset is the first token of the prediction string.
- the devkit's ``ILSVRC2012_validation_ground_truth.txt``: line i holds the ILSVRC2012_ID
  of ``ILSVRC2012_val_{i:08d}``. IDs are not the sorted-synset order, so it needs
  ``--val-synsets``: the devkit's ``data/meta.mat`` (read with SciPy) or a text file whose
  line k names the synset of ILSVRC2012_ID k.
- two columns ``<image file> <synset | class index>`` (class indices need ``--classes``).

``--classes FILE`` fixes the label order: a manifest.json from another conversion (so val
labels match the train shards), or a text file whose lines start with the synset
(``LOC_synset_mapping.txt``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_WNID = re.compile(r"^n\d{8}$")


class LabelsError(Exception):
    """A labels or class file is unreadable or inconsistent; the message says which and why."""


@dataclass
class ValLabels:
    path: str
    by_image: dict[str, str]  # image file name or stem -> synset
    classes: list[str]        # every synset the file knows, sorted (the default label order)
    files: tuple[str, ...]    # the files read (so a labels file inside SRC is not an input)


def load_class_list(path: str) -> list[str]:
    p = _existing(path, "--classes")
    if p.suffix == ".json":
        try:
            classes = json.loads(p.read_text()).get("classes")
        except (json.JSONDecodeError, AttributeError):
            classes = None
        if not isinstance(classes, list) or not classes:
            raise LabelsError(f"--classes {path} is JSON without a 'classes' list; pass a "
                              f"manifest.json written by tools/convert.py")
        return [str(c) for c in classes]
    classes = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
    if len(set(classes)) != len(classes) or not classes:
        raise LabelsError(f"--classes {path} must list each class once, one per line")
    return classes


def read_val_labels(path: str, synsets: str | None = None,
                    classes_file: str | None = None) -> ValLabels:
    p = _existing(path, "--val-labels")
    lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise LabelsError(f"--val-labels {path} is empty")
    files = (str(p),) + ((synsets,) if synsets else ())
    if lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        by_image = _loc_csv(lines[1:], path)
    elif all(ln.isdigit() for ln in lines):
        if not synsets:
            raise LabelsError(f"--val-labels {path} lists ILSVRC2012_IDs (the devkit ground truth); "
                              f"pass --val-synsets devkit/data/meta.mat to map them to synsets")
        id_to_wnid = _devkit_synsets(synsets)
        by_image = {}
        for i, ln in enumerate(lines, start=1):
            if int(ln) not in id_to_wnid:
                raise LabelsError(f"--val-labels {path} line {i}: ILSVRC2012_ID {ln} is not in "
                                  f"--val-synsets {synsets}")
            by_image[f"ILSVRC2012_val_{i:08d}"] = id_to_wnid[int(ln)]
        known = sorted(set(id_to_wnid.values()))
        return ValLabels(path, by_image, known, files)
    else:
        by_image = _two_columns(lines, path, classes_file)
    return ValLabels(path, by_image, sorted(set(by_image.values())), files)


def _existing(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise LabelsError(f"{flag} {path} is not a file; check the path")
    return p


def _loc_csv(rows: list[str], path: str) -> dict[str, str]:
    out = {}
    for n, row in enumerate(rows, start=2):
        image, _, pred = row.partition(",")
        wnid = pred.split()[0] if pred.split() else ""
        if not _WNID.match(wnid):
            raise LabelsError(f"--val-labels {path} line {n}: expected 'ImageId,nXXXXXXXX ...', "
                              f"got {row[:60]!r}")
        out[image.strip()] = wnid
    return out


def _two_columns(lines: list[str], path: str, classes_file: str | None) -> dict[str, str]:
    classes = load_class_list(classes_file) if classes_file else None
    out = {}
    for n, ln in enumerate(lines, start=1):
        parts = ln.replace(",", " ").split()
        if len(parts) != 2:
            raise LabelsError(f"--val-labels {path} line {n}: expected '<image> <synset or index>', "
                              f"got {ln[:60]!r}")
        image, label = parts
        if label.isdigit():
            if classes is None:
                raise LabelsError(f"--val-labels {path} gives class indices; pass --classes "
                                  f"(LOC_synset_mapping.txt or the train manifest.json) to name them")
            if int(label) >= len(classes):
                raise LabelsError(f"--val-labels {path} line {n}: index {label} >= "
                                  f"{len(classes)} classes in --classes")
            label = classes[int(label)]
        out[image] = label
    return out


def _devkit_synsets(path: str) -> dict[int, str]:
    p = _existing(path, "--val-synsets")
    if p.suffix == ".mat":
        import scipy.io  # only this path needs SciPy

        try:
            synsets = scipy.io.loadmat(str(p), squeeze_me=True)["synsets"]
            rows = [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), int(s["num_children"])) for s in synsets]
        except (KeyError, ValueError, TypeError, OSError) as err:
            raise LabelsError(f"--val-synsets {path} is not the devkit's meta.mat ({err})") from None
        return {i: w for i, w, children in rows if children == 0}
    wnids = [ln.split()[0] for ln in p.read_text().splitlines() if ln.strip()]
    if not all(_WNID.match(w) for w in wnids):
        raise LabelsError(f"--val-synsets {path}: each line must start with a synset (nXXXXXXXX)")
    return {i: w for i, w in enumerate(wnids, start=1)}
