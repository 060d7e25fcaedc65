"""Where images come from: list every input of a source, with its label.

Source kinds (``open_source`` picks one from SRC, or ``kind=`` forces it):

- ``folders``   ImageNet-style class folders ``SRC/<wnid>/**/<file>``; label = index of the
                sorted folder names (the standard IN-1k order).
- ``val``       ImageNet-1k validation as shipped: a flat folder + ``labels`` file
                (``LOC_val_solution.csv``, the devkit ground-truth list + its synset map,
                or ``<file> <wnid|index>`` lines).
- ``tars``      ImageNet-22k as shipped: ``SRC/<wnid>.tar`` per synset, read in place.
- ``embedded``  ``embedded:train`` / ``embedded:val``, see data/embedded.py.

Every file under SRC is an input: one that cannot become a sample is recorded in
``Source.skipped`` (while listing) or skipped by the converter (while decoding), never
dropped silently.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from data import embedded
from data.labels import ValLabels, load_class_list, read_val_labels

EMBEDDED_PREFIX = "embedded:"


class SourceError(Exception):
    """SRC cannot be read as asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class Item:
    path: str    # what a person recognises: relative to SRC, "<wnid>.tar/<member>", "embedded:train/3"
    label: int
    ref: tuple   # how to read it: ("file", abspath) | ("tar", tarpath, offset, size) | ("embedded", split, i)


@dataclass
class Source:
    kind: str
    root: str
    classes: list[str]
    items: list[Item]
    skipped: list[dict] = field(default_factory=list)  # {path, reason} found while listing
    notes: list[str] = field(default_factory=list)     # facts worth printing (e.g. unused labels)

    def describe(self) -> dict:
        return {"kind": self.kind, "root": self.root, "num_classes": len(self.classes)}


def read_bytes(ref: tuple) -> bytes:
    """The raw bytes of one input. OSError propagates (the converter records it)."""
    kind = ref[0]
    if kind == "file":
        with open(ref[1], "rb") as f:
            return f.read()
    if kind == "tar":
        _, tar_path, offset, size = ref
        with open(tar_path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"tar member cut short: {len(data)} of {size} bytes")
        return data
    if kind == "embedded":
        return embedded.jpeg_bytes(ref[1], ref[2])
    raise ValueError(f"unknown input reference {ref!r}")


def open_source(src: str, kind: str = "auto", val_labels: str | None = None,
                val_synsets: str | None = None, classes_file: str | None = None) -> Source:
    """List every input of SRC. Raises SourceError with a one-line reason."""
    if src.startswith(EMBEDDED_PREFIX) or kind == "embedded":
        return _embedded(src)
    root = Path(src)
    if not root.exists():
        raise SourceError(f"SRC {src} does not exist; pass an image folder, a folder of "
                          f"per-synset tars, or embedded:train / embedded:val")
    if not root.is_dir():
        raise SourceError(f"SRC {src} is not a folder; pass the folder that holds the images")
    if kind == "auto":
        kind = _detect_kind(root, val_labels)
    if kind == "val":
        if not val_labels:
            raise SourceError(f"SRC {src} holds images but no class folders: for ImageNet "
                              f"validation pass --val-labels LOC_val_solution.csv (or the devkit list)")
        source = _val(root, read_val_labels(val_labels, val_synsets, classes_file), classes_file)
    elif kind == "tars":
        source = _tars(root, classes_file)
    elif kind == "folders":
        source = _folders(root, classes_file)
    else:
        raise SourceError(f"unknown source kind {kind!r}; choose auto, folders, val, tars or embedded")
    if not source.items and not source.skipped:
        raise SourceError(f"SRC {src} holds no files to convert ({kind} source); check the path")
    return source


def _detect_kind(root: Path, val_labels: str | None) -> str:
    if val_labels:
        return "val"
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    if not entries:
        raise SourceError(f"SRC {root} is empty; pass the folder that holds the images")
    if any(e.is_dir() for e in entries):
        return "folders"
    if any(e.name.endswith(".tar") for e in entries):
        return "tars"
    return "val"  # a flat folder of images: needs --val-labels, which open_source asks for


def _walk_files(folder: Path) -> list[Path]:
    """Every regular file below `folder`, sorted, following links to files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in sorted(filenames))
    return found


def _class_index(names: list[str], classes_file: str | None, what: str) -> list[str]:
    """The class list: the given file's, which must cover `names`, or the sorted names."""
    if classes_file is None:
        return sorted(set(names))
    classes = load_class_list(classes_file)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise SourceError(f"{len(unknown)} {what} are not in --classes {classes_file} "
                          f"(e.g. {unknown[:3]}); pass the class list these images belong to")
    return classes


def _folders(root: Path, classes_file: str | None) -> Source:
    dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    classes = _class_index(dirs, classes_file, "class folders")
    label = {c: i for i, c in enumerate(classes)}
    items, skipped = [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_file():
            skipped.append({"path": entry.name, "reason": "not inside a class folder"})
        elif entry.is_dir() and entry.name.startswith("."):
            skipped.append({"path": entry.name + "/", "reason": "hidden folder, not a class"})
    base = root.resolve()  # once: resolving 1.28 M (or 14 M) paths one by one costs minutes
    for name in dirs:
        for path in _walk_files(base / name):
            rel = path.relative_to(base).as_posix()
            items.append(Item(rel, label[name], ("file", str(path))))
    return Source("folders", str(base), classes, items, skipped)


def _val(root: Path, labels: ValLabels, classes_file: str | None) -> Source:
    own = {Path(f).resolve() for f in labels.files}  # a labels file kept beside the images
    entries = sorted((e for e in os.scandir(root) if e.is_file() and Path(e.path).resolve() not in own),
                     key=lambda e: e.name)
    hidden = [{"path": e.name, "reason": "hidden file (e.g. .DS_Store), not an image"}
              for e in entries if e.name.startswith(".")]
    files = {e.name: Path(e.path) for e in entries if not e.name.startswith(".")}
    by_stem = {p.stem: p for p in files.values()}
    matched, missing = {}, []
    for name in files:
        wnid = labels.by_image.get(name, labels.by_image.get(Path(name).stem))
        (missing.append(name) if wnid is None else matched.__setitem__(name, wnid))
    if missing:
        raise SourceError(
            f"labels file {labels.path} does not match the images: {len(missing)} of {len(files)} "
            f"images in {root} have no label (e.g. {sorted(missing)[:3]}); pass the labels file "
            f"of this image set")
    unused = [k for k in labels.by_image if k not in files and k not in by_stem]
    classes = _class_index(labels.classes, classes_file, "label synsets")
    label = {c: i for i, c in enumerate(classes)}
    base = root.resolve()
    items = [Item(name, label[matched[name]], ("file", str(base / name))) for name in sorted(files)]
    notes = [f"{len(unused)} entries of {labels.path} name images that are not in SRC"] if unused else []
    return Source("val", str(root.resolve()), classes, items, hidden, notes)


def _tars(root: Path, classes_file: str | None) -> Source:
    tars = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(".tar"))
    classes = _class_index([p.name[:-4] for p in tars], classes_file, "synset tars")
    label = {c: i for i, c in enumerate(classes)}
    skipped = [{"path": p.name, "reason": "not a per-synset .tar"}
               for p in sorted(root.iterdir()) if not p.name.endswith(".tar")]
    items, notes = [], []
    for tar_path in tars:
        wnid, members = tar_path.name[:-4], []
        try:
            with tarfile.open(tar_path, "r:") as tf:
                for member in tf:
                    if member.isfile():
                        members.append(member)
        except (tarfile.TarError, OSError) as err:
            end = members[-1].offset_data + members[-1].size if members else 0
            if members and end >= tar_path.stat().st_size:  # cut inside its last member:
                notes.append(f"{tar_path.name} is cut short ({err}); its last member is skipped")
            else:  # members after the damage cannot even be listed
                skipped.append({"path": f"{tar_path.name} (after member {len(members)})",
                                "reason": f"tar unreadable from here on: {err}"})
        for m in members:
            items.append(Item(f"{tar_path.name}/{m.name}", label[wnid],
                              ("tar", str(tar_path.resolve()), m.offset_data, m.size)))
    return Source("tars", str(root.resolve()), classes, items, skipped, notes)


def _embedded(src: str) -> Source:
    split = src[len(EMBEDDED_PREFIX):] if src.startswith(EMBEDDED_PREFIX) else None
    if split not in embedded.SPLITS:
        raise SourceError(f"unknown embedded split {src!r}; use embedded:train or embedded:val")
    items = [Item(f"{EMBEDDED_PREFIX}{split}/{i}", embedded.label_of(split, i), ("embedded", split, i))
             for i in range(embedded.num_images(split))]
    return Source("embedded", f"{EMBEDDED_PREFIX}{split}", list(embedded.CLASSES), items)
