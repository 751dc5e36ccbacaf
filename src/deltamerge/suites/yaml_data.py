"""Tables and image folders for YAML suites, read through ``datasets.load_dataset`` (csv, json/jsonl, parquet,
imagefolder, or a hub dataset id), with a column mapping → inputs and integer labels."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from deltamerge.config.shared import Strict
from deltamerge.errors import DeltaMergeError

Format = Literal["csv", "json", "parquet", "imagefolder", "hub"]
_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataSource(Strict):
    """Where one split comes from: a local file / image folder (format from its extension), or a hub dataset."""

    path: str  # file, image-folder directory, or hub dataset id
    format: Optional[Format] = None  # None: from the extension (a directory: imagefolder)
    split: str = "train"  # the split to read (hub datasets, or a file loaded as "train")
    config: Optional[str] = None  # hub dataset configuration name

    def resolved_format(self, base: Path) -> Format:
        if self.format is not None:
            return self.format
        p = self.local_path(base)
        if p.is_dir():
            return "imagefolder"
        if p.suffix.lower() in _EXTENSIONS:
            return _EXTENSIONS[p.suffix.lower()]  # type: ignore[return-value]
        if p.exists():
            raise DeltaMergeError(f"{p}: cannot tell the format from the extension; set format: csv|json|parquet")
        return "hub"

    def local_path(self, base: Path) -> Path:
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else base / p


def load_table(src: DataSource, base: Path):
    """A ``datasets.Dataset`` for ``src`` (relative paths resolve against the suite file's directory)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - optional dependency
        raise DeltaMergeError("YAML suites read their data with `datasets` (pip install datasets)") from None
    from deltamerge.hub_access import hub_errors, require_hub

    fmt = src.resolved_format(base)
    path = src.local_path(base)
    if fmt == "hub":
        require_hub(f"dataset {src.path}")
        with hub_errors(f"dataset {src.path}"):
            return datasets.load_dataset(src.path, src.config, split=src.split)
    if not path.exists():
        raise DeltaMergeError(f"data not found: {path}")
    if fmt == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
    return datasets.load_dataset(fmt, data_files=str(path), split="train")


class TaskSpec(Strict):
    """One classification task: its splits, the input and label columns, optional class names and caps."""

    name: str
    train: DataSource
    test: DataSource
    val: Optional[DataSource] = None  # None: a seeded val_fraction of train
    val_fraction: float = Field(0.1, gt=0, lt=1)
    input: Optional[str] = None  # input column (default: "image" for image folders, else "text")
    label: str = "label"
    classes: Optional[list[str]] = None  # None: the label feature's names, else the sorted distinct train labels
    max_train: Optional[int] = Field(None, ge=1)
    max_val: Optional[int] = Field(None, ge=1)
    max_test: Optional[int] = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _short_sources(cls, data):
        """``train: data/train.csv`` is short for ``train: {path: data/train.csv}``."""
        if isinstance(data, dict):
            data = {k: ({"path": v} if k in ("train", "val", "test") and isinstance(v, str) else v)
                    for k, v in data.items()}
        return data


class ReferenceSpec(Strict):
    """Unlabelled inputs for the curvature (should share no source with the tasks)."""

    source: DataSource
    input: Optional[str] = None
    num_examples: Optional[int] = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _short_source(cls, data):
        if isinstance(data, dict) and isinstance(data.get("source"), str):
            data = {**data, "source": {"path": data["source"]}}
        return data


def class_names(table, spec: TaskSpec) -> tuple[list[str], dict]:
    """Class names and a map raw label → class index. A ClassLabel column keeps its names and order; given
    ``classes``, string labels map to their position and integer labels are indices; otherwise the distinct train
    labels, sorted, are the classes."""
    feature = table.features.get(spec.label)
    if feature is None:
        raise DeltaMergeError(f"task {spec.name}: no label column '{spec.label}' (columns: {table.column_names})")
    values = sorted(set(table[spec.label]), key=lambda v: (isinstance(v, str), v))
    if hasattr(feature, "names") and spec.classes is None:
        return list(feature.names), {i: i for i in range(len(feature.names))}
    if spec.classes is None:
        return [str(v) for v in values], {v: i for i, v in enumerate(values)}
    names = list(spec.classes)
    index = {v: (names.index(v) if isinstance(v, str) and v in names else v) for v in values}
    bad = [v for v, i in index.items() if not isinstance(i, int) or not 0 <= i < len(names)]
    if bad:
        raise DeltaMergeError(f"task {spec.name}: labels {bad[:5]} are not among the classes {names}")
    return names, index
