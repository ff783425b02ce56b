"""Reading a dataset's raw rows: local JSON / JSONL / Parquet / CSV / text files, directories of them, and hub
datasets, through `datasets.load_dataset`.

A .txt file is one row, {"text": the whole file}: a text file is a document whose lines and paragraphs belong
together (line breaks are layout, blank lines are not example boundaries), so it trains as one completion text,
cut into train.seq_len chunks by data.too_long=split rather than into fragments that lose their context. Rows
of one line each are what .jsonl is for.

Owns: telling a local path from a hub name, the dataset's own splits (a directory's train* / validation* /
test* files, a hub dataset's splits), and finding the file and line behind a bad row, so that errors name
them instead of an arrow exception.
"""
import codecs
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import datasets
from datasets import Dataset

from ..errors import DataError
from ..paths import looks_like_local_path

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
BUILDER_OPTIONS = {"text": {"sample_by": "document"}}  # one row per file (see above)
KINDS = ".jsonl, .json, .parquet, .csv or .txt"
SPLITS = ("train", "validation", "test")
TEXT_BUILDERS = ("json", "csv")


@dataclass
class RawSplit:
    """One split of a source as stored, with the local files it came from (in row order) for error messages."""
    rows: Dataset
    where: str  # the source's name in messages: a path, or hub name and split
    files: List[Path] = field(default_factory=list)

    def locate(self, index: int) -> str:
        """'file:line' (JSON lines), 'file row N' (other files) or 'source row N' of row `index`."""
        for path in self.files:
            count = _count_rows(path)
            if index < count:
                if _is_json_lines(path):
                    return f"{path}:{_line_of_row(path, index)}"
                return f"{path} row {index + 1}"
            index -= count
        return f"{self.where} row {index + 1}"


def looks_local(path: str) -> bool:
    """A local path rather than a hub name; a data file's suffix says so even when the file is missing."""
    return looks_like_local_path(path) or Path(path).suffix in BUILDERS


def load_source(path: str, subset: Optional[str] = None, split: Optional[str] = None,
                revision: Optional[str] = None) -> Dict[str, RawSplit]:
    """{split name: RawSplit}. Local files give {"train": ...} unless `split` names another; a directory
    or hub dataset gives its own splits (validation also from valid/dev/val file names), or only `split`."""
    if looks_local(path):
        return _load_local(Path(os.path.expanduser(path)), split)
    try:
        loaded = datasets.load_dataset(path, subset, split=split, revision=revision)
    except Exception as error:  # the hub client's errors vary: not found, offline, gated, bad split
        raise DataError(f"data.path: cannot load hub dataset {path!r} (subset {subset}, split {split}, "
                        f"revision {revision}): {error}") from error
    if isinstance(loaded, Dataset):
        return {"train": RawSplit(loaded, f"{path} [{split}]")}
    return {str(name): RawSplit(rows, f"{path} [{name}]") for name, rows in loaded.items()}


def _load_local(path: Path, split: Optional[str]) -> Dict[str, RawSplit]:
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist")
    if path.is_dir():
        files_by_split = _directory_splits(path)
    else:
        files_by_split = {"train": [path]}
    if split is not None:
        if split not in files_by_split:
            raise DataError(f"data.split: {path} has no split {split!r}; it has {sorted(files_by_split)}")
        files_by_split = {"train": files_by_split[split]}
    loaded = {}
    for name, files in files_by_split.items():
        builders = {BUILDERS.get(f.suffix) for f in files}
        if None in builders or len(builders) != 1:
            raise DataError(f"data.path: {path}: expected {KINDS} files of one kind, "
                            f"got {sorted(f.name for f in files)}")
        for f in files:
            if f.stat().st_size == 0 or (BUILDERS[f.suffix] == "json" and not f.read_bytes().strip()):
                raise DataError(f"data.path: {f} is empty (no rows)")
            if BUILDERS[f.suffix] in TEXT_BUILDERS:
                check_utf8(f)  # arrow reads other bytes without a word, and fails later far from the file
        loaded[name] = RawSplit(_read_files(builders.pop(), files), str(path), files)
    return loaded


def _directory_splits(directory: Path) -> Dict[str, List[Path]]:
    """The data files of a directory by split, named as datasets names them (train*, valid*/dev*, test*);
    files without a split name are all training rows."""
    from datasets.data_files import DataFilesDict, get_data_patterns
    try:
        patterns = get_data_patterns(str(directory))
    except Exception:  # datasets raises EmptyDatasetError when nothing matches
        raise DataError(f"data.path: {directory} holds no {KINDS} files") from None
    found = DataFilesDict.from_local_or_remote(patterns, base_path=str(directory))
    by_split = {str(name): sorted(Path(f) for f in files if Path(f).suffix in BUILDERS)
                for name, files in found.items()}
    by_split = {name: files for name, files in by_split.items() if files}
    if any(f.suffix != ".txt" for files in by_split.values() for f in files):
        # Next to data files, .txt files are notes (README.txt, LICENSE.txt), not rows.
        by_split = {name: [f for f in files if f.suffix != ".txt"] for name, files in by_split.items()}
        by_split = {name: files for name, files in by_split.items() if files}
    if not by_split:
        raise DataError(f"data.path: {directory} holds no {KINDS} files")
    return by_split


def _read_files(builder: str, files: List[Path]) -> Dataset:
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                     **BUILDER_OPTIONS.get(builder, {}))
    except Exception as error:
        for f in files:  # name the first bad line rather than arrow's message
            if builder == "json":
                _check_json_file(f)
        raise DataError(f"data.path: cannot read {', '.join(map(str, files))}: {error.__cause__ or error}") from error


def _is_json_lines(path: Path) -> bool:
    if path.suffix == ".jsonl":
        return True
    with path.open("rb") as f:
        return path.suffix == ".json" and not f.read(4096).lstrip().startswith(b"[")


def check_utf8(path: Path) -> None:
    """Raise DataError naming the first line of `path` that is not UTF-8 text (read in chunks: files may be large)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:  # error.object: the bytes decoded, the last chunk's tail included
                line += error.object[:error.start].count(b"\n")
                raise DataError(f"{path}:{line}: not UTF-8 text (byte {error.object[error.start]:#04x}); save the "
                                "file as UTF-8") from None
            line += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}:{line}: not UTF-8 text (the file ends inside a character); save the file as "
                        "UTF-8") from None


def _check_json_file(path: Path) -> None:
    """Raise DataError naming the first line of `path` that is not valid JSON (check_utf8 has passed it already)."""
    decoded = path.read_text(encoding="utf-8")
    if not _is_json_lines(path):
        try:
            json.loads(decoded)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        return
    first_seen = {}  # field -> (JSON type, line): arrow needs one type per field
    for line_number, line in enumerate(decoded.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            for key, value in row.items():
                if value is None:
                    continue
                kind, seen_on = first_seen.setdefault(key, (type(value).__name__, line_number))
                if kind != type(value).__name__:
                    raise DataError(f"{path}:{line_number}: field '{key}' is {type(value).__name__} here but "
                                    f"{kind} on line {seen_on}")


def _count_rows(path: Path) -> int:
    if BUILDERS[path.suffix] == "text":
        return 1
    if _is_json_lines(path):
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    return len(datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train"))


def _line_of_row(path: Path, index: int) -> int:
    """Line number of the index-th non-blank line (blank lines hold no row)."""
    with path.open("rb") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                if index == 0:
                    return line_number
                index -= 1
    raise IndexError(index)
