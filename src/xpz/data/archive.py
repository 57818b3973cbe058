"""Bundles of spectra files: a DataLink zip, a folder of DataLink products (names with spaces), or a
partitioned catalogue. `expand(source, workdir) -> Bundle` lists the files to read, in path order.

In a bundle of several files, a member that is another Gaia product (XP_SAMPLED, RVS, epoch
photometry, ...) is skipped and listed in `Bundle.skipped` with what it looks like; a corrupt
member, or a bundle with nothing xpz can read, is an `InputError` naming it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from xpz.data.formats import NEEDED, FileKind, identify
from xpz.errors import InputError

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass
class Bundle:
    files: list[FileKind]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in _ZIP_MAGIC


def _members(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(s.startswith((".", "_")) for s in p.relative_to(folder).parts)
    )  # fmt: skip


def _unzip(path: Path, workdir: Path) -> Path:
    target = workdir / path.name
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
            if not names:
                raise InputError(f"{path}: an empty zip archive; {NEEDED}")
            for name in names:
                dest = (target / name).resolve()
                if target.resolve() not in dest.parents:
                    raise InputError(f"{path}: member {name!r} points outside the archive")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(dest, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise InputError(f"{path}: a truncated or corrupt zip archive ({err}); {NEEDED}") from None
    return target


def expand(source: Path | str, workdir: Path) -> Bundle:
    """The readable files of `source` (a file, a zip or a folder); zips are extracted into `workdir`."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: file or folder not found")
    if source.is_file() and source.stat().st_size and is_zip(source):
        folder = _unzip(source, workdir)
    elif source.is_dir():
        folder = source
    else:
        return Bundle([identify(source)])
    paths = _members(folder)
    if not paths:
        raise InputError(f"{source}: no files in the folder; {NEEDED}")
    bundle = Bundle([])
    for path in paths:
        if path.stat().st_size and is_zip(path):
            nested = expand(path, workdir / "nested")
            bundle.files += nested.files
            bundle.skipped += nested.skipped
            continue
        try:
            bundle.files.append(identify(path))
        except InputError as err:
            if "this looks like" not in str(err) or len(paths) == 1:
                raise
            bundle.skipped.append((path, str(err).split("this looks like ", 1)[1].split(";")[0]))
    if not bundle.files:
        found = "; ".join(f"{p.name}: {why}" for p, why in bundle.skipped[:5])
        raise InputError(f"{source}: no XP continuous spectra in the bundle ({found}); {NEEDED}")
    return bundle
