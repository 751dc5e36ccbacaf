"""Write θ0 + α·τ out as a deployable model: a Hugging Face ``save_pretrained`` folder, a plain safetensors state
dict, or one full checkpoint per task vector (the input other merging tools such as mergekit expect).

Task vectors of a ``deltamerge.wrap``-ed model are named ``<attach>.<the model's own name>`` (``model.`` by default;
the built-in backbones: MiniLM ``bert.``, T5 ``t5.``, causal LMs ``lm.``, CLIP and the offline CNN none). Export
strips that prefix, so the written weights load into the plain model (``AutoModel.from_pretrained``,
``load_state_dict``).
Only ``nonlinear`` vectors are weight edits; a linear (tangent-space) vector is refused (it is evaluated with the
linearized model, which no checkpoint format holds).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from deltamerge.artifacts import fingerprint, save_artifact
from deltamerge.errors import DeltaMergeError
from deltamerge.taskvector import TaskVector, check_alpha

MERGEKIT_EXAMPLE = """# mergekit task arithmetic of the exported checkpoints: θ0 + λ·Σ_t τ_t
# run: mergekit-yaml mergekit.yaml out/   (BertModel folders and mergekit 0.1.4: python run_mergekit.py, see there)
merge_method: task_arithmetic
base_model: {base}
models:
{models}
parameters:
  normalize: false
dtype: float32
"""

#: Written beside mergekit.yaml: runs mergekit as ``mergekit-yaml`` does, working around mergekit 0.1.4's crash on
#: BertModel folders (docs/api.md, "mergekit interop"). Its own code, run by the Python that has mergekit.
MERGEKIT_RUNNER = '''"""Merge the checkpoints beside this file with mergekit: `python run_mergekit.py [CONFIG] [OUT]` (defaults:
mergekit.yaml here, merged/ here), run by the Python that has mergekit installed. Does what `mergekit-yaml CONFIG OUT`
does. With mergekit 0.1.4 it first works around a crash on BertModel folders: mergekit's bert.json gives the optional
weight `embeddings.position_ids` aliases, which mergekit stores as a tuple, and plan.py (line 172) adds that tuple to
a list (TypeError: can only concatenate list (not "tuple") to list). The aliases of optional weights are handed to
mergekit's planner as lists; nothing else changes. Written by deltamerge's export_task_checkpoints."""
import sys
from importlib.metadata import version
from pathlib import Path

import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

if version("mergekit") == "0.1.4":
    from mergekit.plan import MergePlanner

    _plan_tensor = MergePlanner.plan_tensor

    def _as_list(weight):
        return weight.model_copy(update={"aliases": list(weight.aliases)}) if weight.aliases else weight

    def _plan_tensor_with_list_aliases(self, weight, weights_in, models, cfg_reader):
        if weight.optional:
            weight, weights_in = _as_list(weight), [_as_list(w) for w in weights_in]
        return _plan_tensor(self, weight, weights_in, models, cfg_reader)

    MergePlanner.plan_tensor = _plan_tensor_with_list_aliases

here = Path(__file__).resolve().parent
config = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "mergekit.yaml"
out = sys.argv[2] if len(sys.argv) > 2 else str(here / "merged")
text = config.read_text()
run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), out, options=MergeOptions(copy_tokenizer=False),
          config_source=text)
'''


def _hf_part(model: nn.Module) -> tuple[str, nn.Module]:
    """(name prefix, the transformers model inside ``model``); refuses a model that holds none."""
    from transformers import PreTrainedModel

    from deltamerge.model import WrappedModel

    if isinstance(model, PreTrainedModel):
        return "", model
    if isinstance(model, WrappedModel) and isinstance(model.model, PreTrainedModel):
        return model.prefix, model.model
    children = [(n, c) for n, c in model.named_children() if isinstance(c, PreTrainedModel)]
    if len(children) == 1:
        return children[0][0] + ".", children[0][1]
    raise DeltaMergeError(f"{type(model).__name__} holds no single transformers model: a Hugging Face folder "
                          "cannot be written (use format 'safetensors' for a plain state dict)")


def _strip(tv: TaskVector, prefix: str) -> TaskVector:
    if not prefix:
        return tv
    outside = [n for n in tv.deltas if not n.startswith(prefix)]
    if outside:
        raise DeltaMergeError(f"the task vector edits parameters outside the exported model ({outside[:3]})")
    return TaskVector({n[len(prefix):]: t for n, t in tv.deltas.items()}, tv.base_fingerprint, tv.kind, tv.meta)


def _check_base(model: nn.Module, vectors: list[TaskVector]) -> str:
    fp = fingerprint(model)
    for tv in vectors:
        if not isinstance(tv, TaskVector):
            raise DeltaMergeError(f"vector must be a TaskVector, got {type(tv).__name__}")
        tv.check_base_fingerprint(fp, "exported model")
        tv._check_weight_edit()
    return fp


MANIFEST = "deltamerge.json"  # provenance of an exported folder, with the list of the files the export wrote


def _is_our_export(out: Path) -> bool:
    """Whether ``out`` is a folder a deltamerge export wrote and nobody added to: its manifest lists every file in
    it. Only such a folder is ever replaced (``overwrite=True``); a user's folder or file never is."""
    try:
        files = json.loads((out / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(files, list):
        return False
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()}
    return present <= set(files) | {MANIFEST}


def _is_our_file(path: Path) -> bool:
    """Whether ``path`` is a deltamerge safetensors artifact (its metadata says so)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "deltamerge" in (f.metadata() or {})
    except Exception:  # not safetensors at all: a user's file
        return False


def _refuse_existing(out: Path, overwrite: bool, folder: bool) -> None:
    """Refuse an existing output without ``overwrite``; with it, refuse anything but a previous deltamerge export
    (nothing a user wrote is ever deleted)."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise DeltaMergeError(f"out: {out} exists; refusing to overwrite it (pass overwrite=True to replace a "
                              "previous export)")
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())  # nothing of a user's to lose
    ours = (empty or out.is_dir() and not out.is_symlink() and _is_our_export(out)) if folder else \
        (out.is_file() and _is_our_file(out))
    if not ours:
        what = "a folder deltamerge export wrote (or it holds files the export did not write)" if folder \
            else "a safetensors file deltamerge wrote"
        raise DeltaMergeError(f"out: {out} exists and is not {what}: refusing to replace it even with "
                              "overwrite=True; choose another output or remove it yourself")


class _FreshDir:
    """Write into a temporary sibling folder, then rename: a failed export leaves nothing behind, and a replaced
    previous export is swapped out only once the new one is complete."""

    def __init__(self, out: Path, overwrite: bool) -> None:
        self.out = Path(out)
        _refuse_existing(self.out, overwrite, folder=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        files = sorted(p.relative_to(self.tmp).as_posix() for p in self.tmp.rglob("*") if not p.is_dir())
        manifest = self.tmp / MANIFEST
        info = json.loads(manifest.read_text()) if manifest.is_file() else {}
        manifest.write_text(json.dumps({**info, "files": sorted(set(files) | {MANIFEST})}, indent=2))
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old.", dir=self.out.parent)) / "old"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)


def _provenance(tv: TaskVector | None, alpha: float, base_fp: str) -> dict:
    return {"base_fingerprint": base_fp, "alpha": alpha,
            "vector": None if tv is None else {k: tv.meta.get(k) for k in ("regime", "task", "method", "suite")
                                               if k in tv.meta}}


def export_hf(model: nn.Module, out: str | Path, vector: TaskVector | None = None, alpha: float = 1.0,
              overwrite: bool = False, tokenizer: Any = None, attn_implementation: str | None = None) -> Path:
    """``save_pretrained`` folder (config + safetensors) of θ0 + α·τ; ``AutoModel.from_pretrained(out)`` loads it.
    ``model``: the wrapped / built-in backbone the vector was trained on (or the raw transformers model);
    ``tokenizer``: saved into the folder too (``save_pretrained``); ``attn_implementation``: recorded in the saved
    config (e.g. "eager"). The one Hugging Face export path (``export_llm`` writes through it)."""
    alpha = check_alpha(alpha)
    fp = _check_base(model, [vector] if vector is not None else [])
    prefix, hf = _hf_part(model)
    merged = hf if vector is None else _strip(vector, prefix)._applied_unchecked(hf, alpha)  # base checked above
    with _FreshDir(Path(out), overwrite) as tmp:
        before = getattr(merged.config, "attn_implementation", None)
        if attn_implementation is not None:
            merged.config.attn_implementation = attn_implementation
        try:
            merged.save_pretrained(tmp, safe_serialization=True)
        finally:
            if attn_implementation is not None:  # the caller's model (no vector: not a copy) keeps its config
                merged.config.attn_implementation = before
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(_provenance(vector, alpha, fp), indent=2))
    return Path(out)


def export_state_dict(model: nn.Module, out: str | Path, vector: TaskVector | None = None, alpha: float = 1.0,
                      overwrite: bool = False) -> Path:
    """A plain safetensors state dict of θ0 + α·τ, for any model (names of the model inside a wrapper; deltamerge
    provenance in the file's metadata)."""
    from deltamerge.model import WrappedModel

    alpha = check_alpha(alpha)
    fp = _check_base(model, [vector] if vector is not None else [])
    out = Path(out)
    _refuse_existing(out, overwrite, folder=False)
    merged = model if vector is None else vector._applied_unchecked(model, alpha)  # base checked above
    if isinstance(merged, WrappedModel):
        merged, prefix = merged.model, merged.prefix
    else:
        prefix = ""
    # clone: tied weights share storage, which safetensors refuses to write twice
    tensors = {k: v.detach().cpu().clone() for k, v in merged.state_dict().items()}
    meta = {"kind": "state_dict", "name_prefix_removed": prefix, **_provenance(vector, alpha, fp)}
    return save_artifact(out, tensors, meta, overwrite=overwrite)


def export_task_checkpoints(model: nn.Module, vectors: dict[str, TaskVector], out: str | Path,
                            overwrite: bool = False, format: str = "auto") -> dict[str, Path]:
    """One full checkpoint θ0 + τ_t per task vector, plus the base θ0 as ``base``, under ``out`` (and, for the
    Hugging Face format, a ``mergekit.yaml`` that task-arithmetic-merges them and ``run_mergekit.py``, which runs it
    also on BertModel folders that mergekit 0.1.4's own ``mergekit-yaml`` crashes on). ``format``: "hf", "safetensors",
    or "auto" (hf when the model holds a transformers model)."""
    if format == "auto":
        try:
            _hf_part(model)
            format = "hf"
        except DeltaMergeError:
            format = "safetensors"
    if format not in ("hf", "safetensors"):
        raise DeltaMergeError(f"unknown export format '{format}' (hf, safetensors)")
    if not vectors:
        raise DeltaMergeError("no task vectors to export")
    if "base" in vectors:
        raise DeltaMergeError("'base' is reserved for θ0's checkpoint; rename that task")
    _check_base(model, list(vectors.values()))
    paths: dict[str, Path] = {}
    with _FreshDir(Path(out), overwrite) as tmp:
        for name, tv in {"base": None, **vectors}.items():
            if format == "hf":
                export_hf(model, tmp / name, tv, 1.0)
                paths[name] = Path(out) / name
            else:
                export_state_dict(model, tmp / f"{name}.safetensors", tv, 1.0)
                paths[name] = Path(out) / f"{name}.safetensors"
        if format == "hf":
            final = Path(out).resolve()  # absolute paths: mergekit takes a bare name for a hub id
            models = "\n".join(f"  - model: {final / name}\n    parameters:\n      weight: 1.0" for name in vectors)
            (tmp / "mergekit.yaml").write_text(MERGEKIT_EXAMPLE.format(base=final / "base", models=models))
            (tmp / "run_mergekit.py").write_text(MERGEKIT_RUNNER)
    return paths


def export_model(model: nn.Module, out: str | Path, vector: TaskVector | None = None, alpha: float = 1.0,
           format: str = "hf", overwrite: bool = False) -> Path:
    """θ0 + α·τ as a Hugging Face folder (``format='hf'``) or a safetensors state dict (``'safetensors'``)."""
    if format == "hf":
        return export_hf(model, out, vector, alpha, overwrite)
    if format == "safetensors":
        return export_state_dict(model, out, vector, alpha, overwrite)
    raise DeltaMergeError(f"unknown export format '{format}' (hf, safetensors)")


def merged_model(model: nn.Module, vector: TaskVector, alpha: float = 1.0) -> nn.Module:
    """θ0 + α·τ as a new in-memory model (the input is untouched); see :meth:`TaskVector.applied`."""
    _check_base(model, [vector])
    return vector._applied_unchecked(model, check_alpha(alpha))


__all__ = ["export_model", "export_hf", "export_state_dict", "export_task_checkpoints", "merged_model"]



def load_hf_model(path: str | Path) -> nn.Module:
    """A local transformers folder as the class its config names (``architectures[0]``, e.g. LlamaForCausalLM),
    else ``AutoModel``; the same model class a vector must have been trained on for its names to match."""
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise DeltaMergeError(f"{path} is not a Hugging Face model folder (config.json missing)")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    return (cls or transformers.AutoModel).from_pretrained(path, local_files_only=True)
