"""Issue 12 (5c): deltamerge-trained task vectors, exported as one checkpoint each, merged by mergekit's own code
(PyPI ``mergekit==0.1.4``, run as ``mergekit-yaml`` in its own environment: see the Makefile's ``mergekit-env``)
agree with deltamerge's merges.

* task arithmetic (mergekit ``task_arithmetic``, and ``linear`` with θ0 weighted 1 − Tλ): identical definitions.
* TIES: mergekit trims per tensor (k = ⌊density·n⌋), elects the sign of the summed trimmed deltas with ties going to
  +1, and divides by the number of agreeing entries. deltamerge's ``ties`` trims over the whole vector (global
  top-k, as the TIES authors' code and FusionBench do). Applied per tensor — with a density that makes density·n an
  integer for every tensor — deltamerge's ``ties_merge`` equals mergekit's to float tolerance; the global-trim
  default differs, and the test prints by how much.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltamerge import merge, wrap
from deltamerge.backbones.base import Head
from deltamerge.config import train_config
from deltamerge.export import export_task_checkpoints
from deltamerge.merging import get_method
from deltamerge.merging.ties import ties_merge
from deltamerge.training import train

ROOT = Path(__file__).resolve().parents[1]


def _mergekit_python() -> str | None:
    exe = os.environ.get("DELTAMERGE_MERGEKIT_PYTHON") or str(ROOT / ".venv-mergekit" / "bin" / "python")
    if not Path(exe).exists():
        return None
    ok = subprocess.run([exe, "-c", "import mergekit.merge"], capture_output=True).returncode == 0
    return exe if ok else None


MERGEKIT = _mergekit_python()
pytestmark = pytest.mark.skipif(MERGEKIT is None, reason="mergekit environment missing: run `make mergekit-env`")


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _vectors(model):
    """Three DELTA-free but deltamerge-trained vectors (the plain non-linear regime: fast on a CPU)."""
    vecs = {}
    for t in range(3):
        g = torch.Generator().manual_seed(t)
        ids = torch.randint(0, 64, (24, 8), generator=g)
        data = [({"input_ids": ids[i:i + 8], "attention_mask": torch.ones(8, 8, dtype=torch.long)},
                 (ids[i:i + 8, -1] % 3)) for i in range(0, 24, 8)]
        head = Head(torch.randn(3, 32, generator=g))
        cfg = train_config("nonlinear", steps=4, batch_size=8, lr=5e-2, weight_decay=0.0, progress=False, seed=t)
        vecs[f"task{t}"] = train(model, head, data, cfg)["main"]
    return vecs


_DRIVER = """
import sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

for cfg, out in zip(sys.argv[1::2], sys.argv[2::2]):  # mergekit-yaml's own steps, several configs in one process
    text = open(cfg).read()
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), out,
              options=MergeOptions(copy_tokenizer=False), config_source=text)
"""


def _mergekit(tmp: Path, configs: dict[str, str], cwd: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Run mergekit on each YAML config (one interpreter start, in ``cwd``); the merged tensors by config name."""
    args = []
    for name, text in configs.items():
        (tmp / f"{name}.yaml").write_text(text)
        args += [str(tmp / f"{name}.yaml"), str(tmp / f"out_{name}")]
    res = subprocess.run([MERGEKIT, "-c", _DRIVER, *args], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    merged = {}
    for name in configs:
        merged[name] = {}
        for f in sorted((tmp / f"out_{name}").glob("*.safetensors")):
            merged[name].update(load_file(str(f)))
    return merged


def _ours(model, merged_tv) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in merged_tv.applied(model).model.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_mergekit_merges_of_exported_checkpoints_agree_with_deltamerge(tmp_path):
    model = wrap(_llama())
    vecs = _vectors(model)
    paths = export_task_checkpoints(model, vecs, tmp_path / "ckpt")
    assert set(paths) == {"base", "task0", "task1", "task2"}
    assert (tmp_path / "ckpt" / "mergekit.yaml").is_file()
    base, lam = str(paths["base"]), 0.4
    models = "".join(f"  - model: {paths[t]}\n    parameters:\n      weight: {lam}\n" for t in vecs)
    tv_list = list(vecs.values())

    density = 0.25  # every tensor size here is a multiple of 4, so ⌊0.25 n⌋ = round(0.25 n)
    ties_models = "".join(f"  - model: {paths[t]}\n    parameters:\n      weight: 1.0\n      density: {density}\n"
                          for t in vecs)
    mk = _mergekit(tmp_path, {
        "ta": f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n{models}"
              "parameters:\n  normalize: false\ndtype: float32\n",
        # linear: (1 − 3λ)·θ0 + λ Σ θ_t (no normalisation) is the same point as θ0 + λ Σ τ_t
        "linear": f"merge_method: linear\nmodels:\n{models}  - model: {base}\n    parameters:\n"
                  f"      weight: {1 - 3 * lam}\nparameters:\n  normalize: false\ndtype: float32\n",
        "ties": f"merge_method: ties\nbase_model: {base}\nmodels:\n{ties_models}"
                "parameters:\n  normalize: true\ndtype: float32\n",
        # the example config written beside the checkpoints, as is
        "exported": (tmp_path / "ckpt" / "mergekit.yaml").read_text()}, cwd=tmp_path / "ckpt")

    # task arithmetic: θ0 + λ Σ τ_t
    ta = _ours(model, get_method("task-arithmetic").prepare(tv_list).apply(lam))
    ta_diffs = {"task_arithmetic": _max_diff(ta, mk["ta"]), "linear": _max_diff(ta, mk["linear"]),
                "exported mergekit.yaml": _max_diff(_ours(model, get_method("task-arithmetic").prepare(tv_list)
                                                          .apply(1.0)), mk["exported"])}
    print("task arithmetic vs mergekit:", {k: f"{v:.2e}" for k, v in ta_diffs.items()})
    assert all(v < 1e-6 for v in ta_diffs.values())
    mk_ties = mk["ties"]
    names = sorted(tv_list[0].deltas)
    per_tensor = {n: ties_merge(torch.stack([v.deltas[n].flatten() for v in tv_list]), density)
                  .view_as(tv_list[0].deltas[n]) for n in names}
    from deltamerge.taskvector import TaskVector

    ours_pt = _ours(model, TaskVector(per_tensor, tv_list[0].base_fingerprint))
    assert _max_diff(ours_pt, mk_ties) < 1e-6
    # the default (global trimming) is a different merge: not within tolerance, and we say by how much
    ours_global = _ours(model, merge(tv_list, "ties", 1.0, density=density))  # same density, global trim
    diff = _max_diff(ours_global, mk_ties)
    print(f"TIES density {density}: per-tensor vs mergekit {_max_diff(ours_pt, mk_ties):.2e}; "
          f"global trimming (deltamerge ties) vs mergekit {diff:.2e}")
    assert diff > 1e-6


def test_exported_bert_merges_with_the_written_runner_where_mergekit_yaml_crashes(tmp_path):
    """Issue 24 (8): mergekit 0.1.4 crashes on any BertModel folder (plan.py:172 adds a list and the tuple of aliases
    its bert.json gives the optional ``embeddings.position_ids``). ``run_mergekit.py``, written beside the exported
    checkpoints, merges them, and the result is θ0 + Σ τ_t."""
    from transformers import BertConfig, BertModel

    from deltamerge.artifacts import fingerprint
    from deltamerge.taskvector import TaskVector

    torch.manual_seed(0)
    model = wrap(BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=37, max_position_embeddings=16)).eval())
    g = torch.Generator().manual_seed(0)
    vecs = {f"t{i}": TaskVector({n: 0.01 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()
                                 if model.default_trainable(n)}, fingerprint(model)) for i in range(2)}
    ckpt = tmp_path / "ckpt"
    export_task_checkpoints(model, vecs, ckpt)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    stock = subprocess.run([MERGEKIT, "-c", _DRIVER, str(ckpt / "mergekit.yaml"), str(tmp_path / "stock")],
                           capture_output=True, text=True, env=env)
    if stock.returncode == 0:  # a mergekit without the bug: the runner is then only a convenience
        print("this mergekit merges BertModel folders itself")
    else:  # the upstream cause, as documented (docs/api.md)
        assert 'can only concatenate list (not "tuple") to list' in stock.stderr and "plan.py" in stock.stderr
    res = subprocess.run([MERGEKIT, str(ckpt / "run_mergekit.py"), str(ckpt / "mergekit.yaml"), str(tmp_path / "m")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    merged = {}
    for f in sorted((tmp_path / "m").glob("*.safetensors")):
        merged.update(load_file(str(f)))
    ours = _ours(model, get_method("task-arithmetic").prepare(list(vecs.values())).apply(1.0))
    ours.pop("embeddings.position_ids", None)  # a buffer mergekit may leave out (optional in its bert.json)
    merged = {k: v for k, v in merged.items() if k in ours}
    diff = _max_diff(ours, merged)
    print(f"BertModel via run_mergekit.py vs deltamerge: {diff:.2e}")
    assert diff < 1e-6
