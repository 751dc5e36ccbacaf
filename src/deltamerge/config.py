"""Configuration as pydantic models, loadable from YAML. Defaults follow the paper (Appendix B, vision)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deltamerge.errors import DeltaMergeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CurvatureConfig(_Strict):
    """Reference-set curvature (EK-FAC of the feature GGN; KFAC for TAK)."""

    kind: Literal["ekfac", "kfac"] = "ekfac"
    probes: Literal["exact", "mc"] = "mc"          # exact: one backward per feature dim; mc: Monte-Carlo probes
    mc_samples: int = Field(1, ge=1)
    num_examples: Optional[int] = Field(None, ge=1)  # subsample the reference set (None = all)
    batch_size: int = Field(64, ge=1)
    kfac_approx: Literal["auto", "expand", "reduce"] = "auto"  # auto: reduce for token inputs, expand for images
    include_bias: bool = True
    joint_bias: bool = True  # one block for [W | b] (keeps weight–bias cross terms); False: separate bias blocks
    jitter: float = Field(1e-6, ge=0)
    seed: int = 0
    device: str = "auto"
    progress: bool = True


class TrainConfig(_Strict):
    """One fine-tuning run of one task under one regime."""

    regime: str = "delta"
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    weight_decay_toward: Literal["zero", "base"] = "zero"  # AdamW decays θ (=θ0+τ) toward 0, as torch.optim.AdamW
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: Optional[float] = None  # the paper uses none
    seed: int = 0
    bf16: bool = False
    device: str = "auto"
    trainable: Literal["default", "all", "attention"] = "default"  # backbone's policy / every parameter / q,k,v,o
    # DELTA (Algorithm 1)
    beta_teacher: float = Field(500.0, ge=0)
    beta_student: float = Field(500.0, ge=0)
    gamma: float = Field(1.0, ge=0)
    alpha_sampling: Literal["uniform", "curriculum", "fixed"] = "uniform"  # U(0.5,1) / released code's [0.5,2] / α=1
    alpha_low: float = 0.5
    alpha_high: float = 1.0
    student_ce_at: Literal["theta", "alpha"] = "theta"  # paper: CE at θ_S; released code: at θ0+α·τ_S
    penalty_every: int = Field(1, ge=1)  # apply the drift penalty every k steps with weight k; 1 = paper
    kd_every: int = Field(1, ge=1)  # apply L_KD every k steps with weight k; 1 = paper
    penalty_batched: bool = True  # drift penalty as one bmm chain per layer shape (= the per-layer loop's value)
    compile: bool = False  # torch.compile each regime's forward (+ jvp) and loss; graphs are built on the first step
    # LoRA regimes (lora, lora-linear, delta-lora's student): τ_W = (lora_alpha / lora_rank)·B·A (peft conventions).
    lora_rank: int = Field(16, ge=1)  # not in the paper; 16 = the ViT-B LoRA checkpoints Core Space merges
    lora_alpha: float = Field(16.0, gt=0)
    lora_lr: Optional[float] = Field(None, gt=0)  # peak learning rate of the factors (None: lr); delta-lora's
    #                                               full fine-tuning teacher keeps lr
    lora_targets: Optional[list[str]] = None  # module-name suffixes (peft target_modules); None: every trainable
    #                                            nn.Linear / ungrouped nn.Conv2d weight
    lora_linear_space: Literal["adapter", "weight"] = "adapter"  # lora-linear: tangent space of (A, B) at (A0, 0),
    #                                    i.e. only B trains (Tang et al. 2024); weight: f0 + J·(s·B·A), A and B train
    # τJp and TAK use beta_teacher as their penalty weight λ (and penalty_every).
    taujp_batch_size: int = Field(32, ge=1)  # τJp: inputs drawn per step from each other task
    # TaLoS (Iurada et al. 2025): keep the least Fisher-sensitive fraction 1 − s of the entries trainable
    talos_sparsity: float = Field(0.9, ge=0, lt=1)  # s: fraction frozen (paper: 0.9)
    talos_rounds: int = Field(4, ge=1)  # mask calibration rounds, kept fraction (1 − s)^(r/R) (authors' code: 4)
    talos_examples: Optional[int] = Field(None, ge=1)  # calibration examples (None: the whole training split)
    talos_score: Literal["fisher", "logit"] = "fisher"  # log-likelihood Fisher / sampled-logit gradient (code)
    talos_exclude_zero: bool = False  # rank only entries with a non-zero score (dead ReLU units; not in the paper)
    # Preference regimes (dpo, dpo-linear, dpo-distilled, dpo-mixed, dpo-lora); dpo-distilled also uses gamma,
    # alpha_sampling / alpha_low / alpha_high, student_ce_at and kd_every above.
    beta_dpo: float = Field(0.1, gt=0)  # β of the DPO loss −log σ(β·margin) (TRL's default)
    dpo_mix_weights: Optional[list[float]] = None  # dpo-mixed: weight of each preference axis (None: all 1)
    checkpoint_every: int = Field(0, ge=0)  # 0 = only at the end
    progress: bool = True


class EvalConfig(_Strict):
    """Evaluation protocols."""

    alpha_grid: list[float] = Field(default_factory=lambda: [round(0.1 * i, 2) for i in range(1, 11)])
    negation_grid: list[float] = Field(default_factory=lambda: [round(0.2 * i, 2) for i in range(1, 11)])
    control_threshold: float = Field(0.95, gt=0, le=1)  # negation: control ≥ threshold × pre-trained control
    batch_size: int = Field(256, ge=1)
    max_eval_examples: Optional[int] = Field(None, ge=1)
    device: str = "auto"


DIAGNOSTIC_NAMES = ("disentanglement", "linearization", "localization", "alpha_sweep", "student_teacher")


class DiagnosticsConfig(_Strict):
    """The paper's diagnostics (Fig. 2-5, 9): computed from a run directory, cached in RUN_DIR/diagnostics.json."""

    enabled: bool = True
    include: list[Literal[DIAGNOSTIC_NAMES]] = Field(default_factory=lambda: list(DIAGNOSTIC_NAMES))
    max_examples: Optional[int] = Field(512, ge=1)  # per task and split (None = the whole split)
    pair_examples: Optional[int] = Field(256, ge=1)  # disentanglement: test examples per task (its cost ∝ grid²)
    grid_size: int = Field(13, ge=2)  # disentanglement error: grid_size × grid_size points over alpha_range²
    alpha_range: tuple[float, float] = (-3.0, 3.0)
    max_pairs: Optional[int] = Field(None, ge=1)  # disentanglement: first k task pairs (None = all)
    sweep_alphas: list[float] = Field(default_factory=lambda: [round(0.25 * i, 2) for i in range(9)])
    batch_size: int = Field(256, ge=1)
    device: str = "auto"

    @field_validator("alpha_range")
    @classmethod
    def _increasing(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"alpha_range must be (low, high) with low < high, got {v}")
        return v


class RunConfig(_Strict):
    """A whole pipeline run: curvature → every task × regime → merge → evaluate → report."""

    suite: str
    suite_options: dict = Field(default_factory=dict)  # validated by the suite (e.g. hub suites: model, split protocol)
    regimes: list[str] = Field(default_factory=lambda: ["nonlinear", "linear", "delta"])
    preset: Literal["quick", "full"] = "quick"
    out: Path = Path("runs/run")
    tasks: Optional[list[str]] = None
    merge_method: str = "task-arithmetic"
    # post-hoc methods also evaluated (addition and negation) on the vectors of the regimes in extra_merges_on, shown
    # as extra rows "nonlinear + tsv" (the paper's Table 2 applies TIES / TSV-M / Iso-C to non-linear FT vectors)
    extra_merges: list[str] = Field(default_factory=list)
    extra_merges_on: list[str] = Field(default_factory=lambda: ["nonlinear"])
    curvature: Optional[CurvatureConfig] = None  # None: the suite's preset default
    train: dict[str, dict] = Field(default_factory=dict)  # per-regime overrides of the suite's TrainConfig
    eval: Optional[EvalConfig] = None
    diagnostics: Optional[DiagnosticsConfig] = None  # None: the preset's default (cheap for quick); enabled=False skips


def load_yaml(path: str | Path, model: type[BaseModel]) -> BaseModel:
    """Read a YAML file into ``model``; one clear error for a missing file or invalid field."""
    path = Path(path)
    if not path.is_file():
        raise DeltaMergeError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return model.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise DeltaMergeError(f"invalid config {path}:\n{exc}") from None


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def config_hash(cfg: BaseModel, ignore: tuple[str, ...] = ("progress", "checkpoint_every", "device")) -> str:
    """Short hash of the settings that change a result (progress bars, checkpoint cadence, device excluded)."""
    import hashlib
    import json

    data = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ignore}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
