"""Issue 24, "regimes multiply as subclasses": DELTA's algorithm is written once (an objective strategy picks CE or
DPO), LoRA wiring lives in one place (a parametrization strategy per role), and a new combination is a registration
of a few lines. (Bit-identity of every regime across the change: tests/test_bit_identity.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import deltamerge.training as training_pkg
from deltamerge.backbones.toy import ToyMLP
from deltamerge.config import CurvatureConfig, train_config
from deltamerge.curvature import estimate_curvature
from deltamerge.data import ArrayDataset
from deltamerge.heads import Head
from deltamerge.linearize import FunctionalModel
from deltamerge.training import REGIMES, train, trainable_names
from deltamerge.training.delta import Delta
from deltamerge.training.dpo_distilled import DistilledDPO
from deltamerge.training.lora_adapters import LORA_A, LORA_B
from deltamerge.training.objective import CrossEntropy, Preference
from deltamerge.training.parametrization import LoRAFactors

TRAINING = Path(training_pkg.__file__).parent
DELTA_FAMILY = ["delta", "delta-lora", "dpo-distilled", "dpo-distilled-curvature", "dpo-distilled-lora"]


def test_delta_and_distilled_dpo_share_one_algorithm():
    """One Delta.backward; the family differs only in its objective (and parametrization / curvature)."""
    for name in DELTA_FAMILY:
        assert issubclass(REGIMES[name], Delta) and REGIMES[name].backward is Delta.backward, name
    assert {REGIMES[n].objective_cls for n in DELTA_FAMILY} == {CrossEntropy, Preference}
    assert REGIMES["delta"].needs_head and not REGIMES["dpo-distilled-lora"].needs_head


def _calls(path: Path, name: str) -> int:
    tree = ast.parse(path.read_text())
    return sum(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
               for n in ast.walk(tree))


def test_lora_wiring_lives_in_one_module():
    """The LoRA adapters are built in the parametrization strategy only (before: lora.py, dpo.py, delta_lora.py,
    dpo_distilled.py each built and wired them)."""
    builders = sorted(p.name for p in TRAINING.glob("*.py") if _calls(p, "LoRAAdapters"))
    assert builders == ["parametrization.py"]
    for name in ("lora", "lora-linear", "dpo-lora", "delta-lora", "dpo-distilled-lora"):
        assert "parametrize" in vars(REGIMES[name]), name  # each LoRA regime only picks the strategy


def _mlp():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    return ToyMLP(), Head(torch.randn(2, 6)), ArrayDataset(x, (x[:, 0] > 0).long())


def test_a_new_combination_costs_a_registration_lora_teacher_and_student():
    """DELTA with a LoRA student and a LoRA teacher (both factors trained), defined here in three lines: both roles
    train their factors only, get gradients from the one algorithm, and export τ = s·B·A."""

    class BothLoRA(Delta):  # not registered: a user's combination, built from the strategies
        def parametrize(self, role):
            return LoRAFactors(self.model, self.cfg)

    backbone, head, data = _mlp()
    curv = estimate_curvature(backbone, torch.randn(16, 8), CurvatureConfig(probes="exact", progress=False))
    cfg = train_config("delta-lora", steps=2, batch_size=16, lr=1e-2, beta_teacher=1.0, beta_student=1.0,
                       lora_rank=2, progress=False)  # the LoRA settings
    model = FunctionalModel(backbone, trainable_names(backbone, "default"))
    reg = BothLoRA(model, head, cfg, curv)
    for role in ("student", "teacher"):
        assert sorted(reg.vectors[role]) == sorted(f"{p}fc{i}.weight" for i in (1, 2, 3) for p in (LORA_A, LORA_B))
    with torch.no_grad():
        for role in ("student", "teacher"):
            for b in reg.roles[role].adapters.B.values():
                b.normal_()
    x, y = data.inputs[:16], data.labels[:16]
    logs = reg.backward(x, y, 0)
    assert {"loss_T", "loss_S", "kd", "drift_S", "ce_S"} <= set(logs)
    for role in ("student", "teacher"):
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in reg.vectors[role].values()), role
        deltas, factors = reg.export(role)
        for n, (sb, a) in factors.items():
            assert torch.equal(deltas[n], (sb @ a).reshape(deltas[n].shape))
    # the teacher's drift is the low-rank penalty of its own factors (= the dense penalty of s·B·A)
    dense_tau = {n: t.detach() for n, t in reg.roles["teacher"].tau().items()}
    assert torch.allclose(reg.teacher_drift(reg.roles["teacher"].tau(), 0), curv.penalty(dense_tau), rtol=1e-5)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from llm_fixtures import tiny_llama_dir, tiny_pairs

    from deltamerge.backbones.causal_lm import load_causal_lm
    from deltamerge.suites.preference_data import encode_pairs

    backbone = load_causal_lm(str(tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama-strategies"))))
    return backbone, encode_pairs(backbone.tokenizer, tiny_pairs(8), 24, "be brief")


def test_distilled_dpo_with_a_lora_student_is_delta_with_the_dpo_objective(llama):
    """dpo-distilled-lora is a registration; its student trains factors only, its teacher the dense τ_T, and the
    student's vector carries its factors."""
    backbone, pairs = llama
    assert set(vars(REGIMES["dpo-distilled-lora"])) - {"__module__", "__doc__", "name", "config_cls"} \
        <= {"parametrize", "__qualname__", "needs_head"}
    out = train(backbone, None, pairs, train_config("dpo-distilled-lora", steps=2, batch_size=8, lr=1e-3,
                                                    lora_rank=2, progress=False))
    s, t = out["student"], out["teacher"]
    assert s.factors and t.factors is None and s.norm() > 0 and t.norm() > 0
    assert {"dpo_S", "pref_acc_T", "pref_acc_S", "kd"} <= set(s.meta["final_logs"])
    assert REGIMES["dpo-distilled"].backward is DistilledDPO.backward is Delta.backward
