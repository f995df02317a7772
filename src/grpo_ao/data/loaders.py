"""Read examples from the built-in sets, a JSONL file or a Hugging Face `datasets` source.

Bad rows (invalid JSON, missing fields, empty text, wrong types) are reported with their location
("file:line", 1-based; "hf:name[split]:row i", 0-based) and skipped with a `BadRowWarning` or raised
as `GrpoAoError`, per `DataConfig.on_bad_row`. Blank lines in JSONL files are not rows and are
ignored silently. We do not deduplicate, shuffle or reorder: `max_examples` keeps the first N valid
examples in file order (the sampler does the shuffling).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from grpo_ao.data.config import DataConfig
from grpo_ao.data.schema import BadRow, Example, parse_row
from grpo_ao.errors import GrpoAoError

BUILTIN_FILES = {"builtin": "builtin_train.jsonl", "builtin_heldout": "builtin_heldout.jsonl",
                 "builtin_eval": "builtin_eval.jsonl"}
MAX_ROW_WARNINGS = 20
"""Bad rows warned about one by one; after that only the final count is reported."""

_HF_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class BadRowWarning(UserWarning):
    """A row was skipped because it does not follow the data schema."""


def load_examples(cfg: DataConfig) -> list[Example]:
    """Load and validate all examples of `cfg.source`.

    1. read raw rows with their locations, 2. parse each into an `Example` (bad rows skipped or
    raised per `cfg.on_bad_row`), 3. stop after `cfg.max_examples` valid examples.

    Raises:
        GrpoAoError: missing file, unloadable dataset, a bad row with `on_bad_row="error"`, or no
            valid example at all.
    """
    if cfg.source in BUILTIN_FILES:
        rows = _builtin_rows(BUILTIN_FILES[cfg.source])
    elif cfg.source.startswith("hf:"):
        rows = _hf_rows(cfg.source[3:].strip(), cfg.split)
    else:
        rows = _jsonl_rows(Path(cfg.source).expanduser(), label=cfg.source)
    examples: list[Example] = []
    bad = 0
    for location, row in rows:  # 1.
        try:  # 2.
            if isinstance(row, BadRow):
                raise row
            examples.append(parse_row(row, source=location))
        except BadRow as err:
            bad += 1
            if cfg.on_bad_row == "error":
                raise GrpoAoError(f"{location}: bad row: {err}. Fix the row, or set data.on_bad_row=skip "
                                  "to skip bad rows with a warning.") from None
            if bad <= MAX_ROW_WARNINGS:
                warnings.warn(f"{location}: skipped bad row: {err}", BadRowWarning, stacklevel=2)
        if cfg.max_examples is not None and len(examples) >= cfg.max_examples:  # 3.
            break
    if bad > MAX_ROW_WARNINGS:
        warnings.warn(f"{cfg.source}: skipped {bad} bad rows in all (only the first {MAX_ROW_WARNINGS} "
                      "were listed)", BadRowWarning, stacklevel=2)
    if not examples:
        raise GrpoAoError(f"data.source={cfg.source!r} has no valid example ({bad} bad rows). "
                          "See docs/data.md for the row schema.")
    return examples


def _parse_lines(lines: Iterator[bytes], label: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, decoded row or BadRow) per non-blank line."""
    for lineno, raw in enumerate(lines, start=1):
        location = f"{label}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield location, BadRow(f"not valid UTF-8 ({err.reason})")
            continue
        if not text.strip():
            continue
        try:
            yield location, json.loads(text)
        except json.JSONDecodeError as err:
            yield location, BadRow(f"invalid JSON ({err.msg} at column {err.colno})")


def _jsonl_rows(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        raise GrpoAoError(f"data.source: file not found: {path} (resolved to {path.absolute()}). "
                          "Check the path; relative paths are taken from the current directory.")
    with path.open("rb") as fh:
        yield from _parse_lines(iter(fh), label)


def _builtin_rows(name: str) -> Iterator[tuple[str, Any]]:
    ref = resources.files("grpo_ao").joinpath("resources", name)
    if not ref.is_file():
        raise GrpoAoError(f"the built-in data file {name} is missing from the installed package; "
                          "reinstall grpo-ao (pip install -e .) or run scripts/make_builtin_data.py.")
    yield from _parse_lines(iter(ref.read_bytes().splitlines()), name)


def builtin_path(source: str) -> Path:
    """Filesystem path of a shipped data set ("builtin", "builtin_heldout" or "builtin_eval")."""
    return Path(str(resources.files("grpo_ao").joinpath("resources", BUILTIN_FILES[source])))


def _hf_rows(spec: str, split: str) -> Iterator[tuple[str, Any]]:
    """Rows of a Hugging Face data set: a Hub name, a `save_to_disk` folder, a data file or a folder
    of data files. Local paths never touch the network."""
    import datasets  # lazy: importing datasets costs about a second

    path = Path(spec).expanduser()
    looks_local = spec.startswith(("/", ".", "~")) or path.exists()
    if looks_local and not path.exists():
        raise GrpoAoError(f"data.source: local dataset path not found: {path}. Check the path, or give a Hub "
                          "name such as hf:owner/name.")
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise GrpoAoError(f"data.split={split!r} is not in {path}; available: {sorted(ds)}.")
                ds = ds[split]
        elif path.is_file():
            builder = _HF_FILE_BUILDERS.get(path.suffix)
            if builder is None:
                raise GrpoAoError(f"data.source: cannot read {path} with datasets; use a file ending in "
                                  f"{sorted(_HF_FILE_BUILDERS)} or a saved dataset folder.")
            ds = datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        else:
            ds = datasets.load_dataset(str(path) if looks_local else spec, split=split)
    except GrpoAoError:
        raise
    except Exception as err:  # datasets/hub/pyarrow raise many types; all mean "cannot load this"
        raise GrpoAoError(f"could not load Hugging Face dataset {spec!r} (split {split!r}): "
                          f"{type(err).__name__}: {err}. Check the name and split, the network (Hub names "
                          "need it), or convert the data to a .jsonl file (docs/data.md).") from err
    for i, row in enumerate(ds):
        yield f"hf:{spec}[{split}]:row {i}", row
