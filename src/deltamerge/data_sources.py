"""Any data in, the in-memory / lazy :class:`~deltamerge.data.ArrayDataset` out.

Training, evaluation, heads and the reference set accept:

* an :class:`ArrayDataset` (as is), or a tensor / dict of tensors (reference inputs only);
* a torch map-style ``Dataset`` (``TensorDataset``: its tensors; otherwise items ``(x, y)`` or dicts, read on demand);
* a Hugging Face ``datasets.Dataset`` with a column mapping, e.g. ``columns={"inputs": "pixel_values",
  "labels": "label"}`` or ``{"inputs": ["input_ids", "attention_mask"], "labels": "label"}`` (rows read on demand,
  in torch format; without a mapping ``pixel_values`` or ``input_ids``/``attention_mask``/``token_type_ids`` and
  ``label``/``labels`` are used when present);
* a ``DataLoader`` or any other iterable of ``(inputs, labels)`` batches (read once and held in memory; the trainers
  then draw their own seeded batches of ``cfg.batch_size``, so training resumes exactly).

Map-style sources keep the exact-resume behaviour of ``training.loop.index_stream``: rows are addressed by index.
Anything else raises one :class:`DeltaMergeError` that says what was expected.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate

from deltamerge.data import ArrayDataset, Inputs, as_labels, refuse_column
from deltamerge.errors import DeltaMergeError
from deltamerge.lazy import LazyInputs, StreamedInputs

Columns = Mapping[str, Any]
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_EXPECTED = ("an ArrayDataset, a torch Dataset / TensorDataset, a DataLoader, an iterable of (inputs, labels) "
             "batches, or a datasets.Dataset with columns={'inputs': ..., 'labels': ...}")


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("datasets.") and type(obj).__name__ == "Dataset"


def _hf_columns(ds: Any, columns: Columns | None, need_labels: bool) -> tuple[Any, str | None]:
    """(input spec: one column name or {model kwarg: column}, label column or None)."""
    names = list(ds.column_names)
    columns = dict(columns or {})
    unknown = set(columns) - {"inputs", "labels"}
    if unknown:
        raise DeltaMergeError(f"columns mapping takes 'inputs' and 'labels', got {sorted(unknown)}")
    inputs = columns.get("inputs")
    if inputs is None:
        if "pixel_values" in names:
            inputs = "pixel_values"
        elif "input_ids" in names:
            inputs = [k for k in _TOKEN_KEYS if k in names]
        else:
            raise DeltaMergeError(f"say which column(s) hold the inputs: columns={{'inputs': ..., 'labels': ...}} "
                                  f"(columns: {names})")
    if isinstance(inputs, (list, tuple)):
        inputs = {c: c for c in inputs}
    labels = columns.get("labels", next((c for c in ("label", "labels") if c in names), None))
    used = ([inputs] if isinstance(inputs, str) else list(inputs.values())) + ([labels] if labels else [])
    missing = [c for c in used if c not in names]
    if missing:
        raise DeltaMergeError(f"column(s) {missing} not in the dataset (columns: {names})")
    if need_labels and labels is None:
        raise DeltaMergeError(f"say which column holds the labels: columns={{'labels': ...}} (columns: {names})")
    return inputs, labels


def _hf_inputs(ds: Any, spec: Any) -> LazyInputs:
    cols = [spec] if isinstance(spec, str) else list(spec.values())
    table = ds.select_columns(cols).with_format("torch")

    def load(rows: list[int]) -> Inputs:
        batch = table[rows]
        for c, v in batch.items():
            if not isinstance(v, Tensor):
                raise DeltaMergeError(f"column '{c}' holds rows of different shapes; pad them to one length "
                                      "(e.g. tokenizer(..., padding='max_length')) or convert them first")
        return batch[spec] if isinstance(spec, str) else {k: batch[c] for k, c in spec.items()}

    return LazyInputs(range(len(ds)), load, token_inputs=not isinstance(spec, str))


def _split_item(item: Any, columns: Columns | None) -> tuple[Any, Any]:
    """(inputs, label or None) of one dataset item / one batch."""
    if isinstance(item, Mapping):
        cols = dict(columns or {})
        spec = cols.get("inputs")
        lab = cols.get("labels", next((c for c in ("label", "labels") if c in item), None))
        if spec is None:
            x = {k: v for k, v in item.items() if k != lab}
            if len(x) == 1:
                x = next(iter(x.values()))
        elif isinstance(spec, str):
            x = item[spec]
        elif isinstance(spec, Mapping):
            x = {k: item[c] for k, c in spec.items()}
        else:
            x = {c: item[c] for c in spec}
        return x, (item[lab] if lab is not None else None)
    if isinstance(item, (tuple, list)):
        if len(item) == 2:
            return item[0], item[1]
        if len(item) == 1:
            return item[0], None
        raise DeltaMergeError(f"expected (inputs, labels) items, got a {len(item)}-tuple")
    return item, None


def _map_style(ds: Dataset, columns: Columns | None, need_labels: bool) -> tuple[Inputs, Tensor | None]:
    if isinstance(ds, TensorDataset):
        if len(ds.tensors) not in (1, 2):
            raise DeltaMergeError(f"a TensorDataset of (inputs, labels) is expected, got {len(ds.tensors)} tensors")
        labels = ds.tensors[1] if len(ds.tensors) == 2 else None
        if need_labels and labels is None:
            raise DeltaMergeError("the TensorDataset has no labels tensor")
        return ds.tensors[0], (as_labels(labels) if labels is not None else None)
    n = len(ds)  # type: ignore[arg-type]
    labels = None
    if need_labels:  # one pass over the items for the labels (inputs stay lazy)
        labels = as_labels([int(_split_item(ds[i], columns)[1]) for i in range(n)], "dataset labels")

    def load(rows: list[int]) -> Inputs:
        return default_collate([_split_item(ds[i], columns)[0] for i in rows])

    first = _split_item(ds[0], columns)[0] if n else None
    return LazyInputs(range(n), load, token_inputs=isinstance(first, Mapping)), labels


def _cat(parts: list[Any]) -> Any:
    if isinstance(parts[0], Mapping):
        return {k: _cat([p[k] for p in parts]) for k in parts[0]}
    parts = [torch.as_tensor(p) for p in parts]
    return torch.stack(parts) if parts[0].dim() == 0 else torch.cat(parts)


def _iterable(data: Iterable, columns: Columns | None, need_labels: bool) -> tuple[Inputs, Tensor | None]:
    xs, ys = [], []
    for item in data:
        x, y = _split_item(item, columns)
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DeltaMergeError("the data source yielded no batch")
    if any(y is None for y in ys):
        if need_labels:
            raise DeltaMergeError("the batches carry no labels: yield (inputs, labels) pairs")
        return _cat(xs), None
    return _cat(xs), as_labels(_cat(ys), "batch labels")


def _resolve(data: Any, columns: Columns | None, need_labels: bool, what: str) -> tuple[Inputs, Tensor | None]:
    refuse_column(data, what)
    if _is_hf_dataset(data):
        spec, lab = _hf_columns(data, columns, need_labels)
        labels = None
        if lab is not None:
            labels = as_labels(data.select_columns([lab]).with_format("torch")[:][lab], f"column '{lab}'")
        return _hf_inputs(data, spec), labels
    if isinstance(data, DataLoader):
        return _iterable(data, columns, need_labels)  # one pass; the loader's collate_fn makes the batches
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        if not hasattr(data, "__len__"):
            raise DeltaMergeError(f"{what}: a map-style Dataset needs __len__")
        return _map_style(data, columns, need_labels)
    if isinstance(data, (str, bytes, Tensor, Mapping)) or not isinstance(data, Iterable):
        raise DeltaMergeError(f"{what}: got {type(data).__name__}; expected {_EXPECTED}")
    return _iterable(data, columns, need_labels)


def as_dataset(data: Any, columns: Columns | None = None, what: str = "data") -> ArrayDataset:
    """Labelled data as an :class:`ArrayDataset` (lazy where the source is map-style)."""
    if isinstance(data, ArrayDataset):
        if columns is not None:
            raise DeltaMergeError("columns= applies to datasets.Dataset and dict items, not to an ArrayDataset")
        return data
    inputs, labels = _resolve(data, columns, True, what)
    return ArrayDataset(inputs, labels)


def as_inputs(data: Any, columns: Columns | None = None, what: str = "reference set") -> Inputs:
    """Unlabelled inputs (the curvature's reference set): labels, if any, are dropped."""
    if isinstance(data, (Tensor, LazyInputs, StreamedInputs)):
        return data
    if isinstance(data, Mapping) and all(isinstance(v, Tensor) for v in data.values()):
        return dict(data)
    if isinstance(data, ArrayDataset):
        return data.inputs
    return _resolve(data, columns, False, what)[0]
