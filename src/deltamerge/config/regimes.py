"""One training configuration per regime, over a shared optimiser/schedule base (a discriminated union on ``regime``).

Each regime's class holds exactly the settings it reads: the shared ones (``BaseTrainConfig``: steps, batch size,
AdamW, schedule, seed, precision) plus its own groups (DELTA's β/γ/α sampling, LoRA's rank and scale, TaLoS' mask,
τJp's batch). A field that does not apply to a regime is an error, never a silently ignored setting.

    train_config("linear", steps=3)                 # a LinearConfig; train() runs the regime its config names
    train_config("nonlinear", beta_student=1.0)     # error: beta_student belongs to delta, delta-lora
    TypeAdapter(TrainConfig).validate_python({...}) # the union, dispatched on "regime" (YAML files, results)
    recipe_config(regime="nonlinear", **suite_defaults)  # a suite's recipe: keeps the fields the regime has

To add a setting, add a field to the class (or group) of the regimes that read it; to add a regime, add a class with
``regime: Literal["name"]`` and register it (``regime_config``): ``REGIME_CONFIGS`` and the ``TrainConfig`` union are
built from that registry (a test checks it against the regime registry, ``training.REGIMES``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Iterable, Literal, Optional, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from deltamerge.config.profiles import PROFILES, expand_profile
from deltamerge.config.shared import Strict
from deltamerge.errors import DeltaMergeError, InvalidSettings, validation_message


class BaseTrainConfig(Strict):
    """The settings every regime shares: one fine-tuning run of one task (AdamW, warm-up + cosine schedule)."""

    regime: str
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
    compile: bool = False  # torch.compile each regime's forward (+ jvp) and loss; graphs are built on the first step
    checkpoint_every: int = Field(0, ge=0)  # 0 = only at the end
    grad_accum_steps: int = Field(1, ge=1)  # k micro-batches per optimiser step (each rank's share of batch_size)
    progress: bool = True
    # divergence: stop when ‖τ‖/‖θ0‖ exceeds this (training/safety.py); None disables the check
    max_update_ratio: Optional[float] = Field(10.0, gt=0)
    # feature space of the regime's losses, linearization and penalties (feature_space.py): f, or n∘f = f/‖f‖
    # (the DELTA authors distill and penalise on normalised CLIP features; the teacher linearizes n∘f)
    feature_transform: Literal["identity", "normalize"] = "identity"

    @model_validator(mode="after")
    def _batch_splits(self) -> "BaseTrainConfig":
        """``batch_size`` is the optimiser step's batch, cut into ``grad_accum_steps`` micro-batches: each needs ≥ 1
        example (e.g. the authors' ViT-L/14 recipe, 8 × 16, is batch_size 128 with grad_accum_steps 16)."""
        if self.batch_size < self.grad_accum_steps:
            raise ValueError(f"batch_size {self.batch_size} < grad_accum_steps {self.grad_accum_steps}: the optimiser "
                             f"step's batch cannot be split into {self.grad_accum_steps} micro-batches (batch_size is "
                             f"the step's batch; for {self.batch_size} examples per micro-batch set batch_size "
                             f"{self.batch_size * self.grad_accum_steps})")
        return self


# ---- groups of settings, mixed into the regimes that read them ------------------------------------------------------
class Trainable(BaseModel):
    """Which parameters fine-tune (every regime but attn-only, whose policy is fixed)."""

    trainable: Literal["default", "all", "attention"] = "default"  # backbone's policy / every parameter / q,k,v,o


class PenaltySchedule(BaseModel):
    """How often a regularizer is applied: every k steps with weight k (1 = every step, the papers' setting)."""

    penalty_every: int = Field(1, ge=1)


class DeltaSettings(PenaltySchedule):
    """DELTA, Algorithm 1: drift weights β_T, β_S, distillation weight γ, α sampling and the cost levers."""

    beta_teacher: float = Field(500.0, ge=0)
    beta_student: float = Field(500.0, ge=0)
    gamma: float = Field(1.0, ge=0)
    alpha_sampling: Literal["uniform", "curriculum", "fixed"] = "uniform"  # U(0.5,1) / [0.5,2] (released code's
    #   unreached along-path branch) / α=1 (what the released loop executes)
    alpha_low: float = 0.5
    alpha_high: float = 1.0
    student_ce_at: Literal["theta", "alpha"] = "theta"  # paper: CE at θ_S; released along-path: at θ0+α·τ_S
    teacher_ce_at: Literal["theta", "alpha"] = "theta"  # paper: CE at f_lin(θ_T); released along-path: f0 + α·Jτ_T
    projection_penalty_scale: float = Field(1.0, ge=0)  # DELTA drift: output projection's block ×this (released 0.1)
    dense_norm_blocks: bool = False  # released code: LayerNorms + class embedding trained, their drift penalised by
    #   dense GGN blocks (curvature/dense_blocks.py) ×dense_block_scale; regime delta only (the field sits here, with
    #   the other DELTA switches, so that existing delta-lora / dpo-distilled result hashes stay valid)
    profile: Literal["paper", "released", "released-along-path"] = "paper"  # a named bundle of switches
    #   (config/profiles.py; docs/reproduce.md)
    kd_every: int = Field(1, ge=1)  # apply L_KD every k steps with weight k; 1 = paper
    penalty_batched: bool = True  # drift penalty as one bmm chain per layer shape (= the per-layer loop's value)

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, data: Any) -> Any:
        """The profile's switches filled in where the user set none (only those this regime's class has)."""
        if not isinstance(data, dict):
            return data
        regime = cls.model_fields["regime"].default
        full = expand_profile(data, regime)
        bundle = PROFILES.get(full.get("profile", "paper"), {})
        return {k: v for k, v in full.items() if k in data or k not in bundle or k in cls.model_fields}

    @model_validator(mode="after")
    def _dense_blocks_regime(self) -> "DeltaSettings":
        if self.dense_norm_blocks and self.regime != "delta":
            raise ValueError(f"dense_norm_blocks applies to regime 'delta' only, not '{self.regime}' (a LoRA student "
                             "or a DPO model has no dense LayerNorm task vector here)")
        return self


class LoRASettings(BaseModel):
    """LoRA factors: τ_W = (lora_alpha / lora_rank)·B·A (peft conventions)."""

    lora_rank: int = Field(16, ge=1)  # not in the paper; 16 = the ViT-B LoRA checkpoints Core Space merges
    lora_alpha: float = Field(16.0, gt=0)
    lora_lr: Optional[float] = Field(None, gt=0)  # peak learning rate of the factors (None: lr); delta-lora's
    #                                               full fine-tuning teacher keeps lr
    lora_targets: Optional[list[str]] = None  # module-name suffixes (peft target_modules); None: every trainable
    #                                            nn.Linear / ungrouped nn.Conv2d weight


class InterferencePenalty(PenaltySchedule):
    """τJp / TAK: linear fine-tuning plus λ·(drift on the other tasks); each regime has its own λ (the authors')."""


#: regime name → its configuration class, in registration order (each class below registers itself)
REGIME_CONFIGS: dict[str, type[BaseTrainConfig]] = {}


def regime_config(cls: type[BaseTrainConfig]) -> type[BaseTrainConfig]:
    """Register a regime's configuration class under the name its ``regime: Literal[...]`` field fixes."""
    REGIME_CONFIGS[cls.model_fields["regime"].default] = cls
    return cls


# ---- one class per regime ---------------------------------------------------------------------------------------------
@regime_config
class NonLinearConfig(Trainable, BaseTrainConfig):
    """Standard fine-tuning (Ilharco et al., 2022)."""

    regime: Literal["nonlinear"] = "nonlinear"


@regime_config
class LinearConfig(Trainable, BaseTrainConfig):
    """Tangent-space fine-tuning (Ortiz-Jimenez et al., 2023)."""

    regime: Literal["linear"] = "linear"


@regime_config
class DeltaConfig(DeltaSettings, Trainable, BaseTrainConfig):
    """DELTA: linearized teacher distilled into a non-linear student along the α path."""

    regime: Literal["delta"] = "delta"
    hash_omit_defaults: ClassVar[tuple[str, ...]] = ("dense_block_scale", "dense_block_reduction",
                                                     "dense_block_bias", "drift", "drift_batch_size",
                                                     "reference_augment")  # config_hash: absent at the default
    dense_block_scale: float = Field(10.0, ge=0)  # with dense_norm_blocks: the dense blocks' weight (released: ×10)
    # with dense_norm_blocks (curvature/dense_blocks.py ``penalty_form``): G_p as the mean over the N reference
    # examples (paper profile's choice) or their sum (released code, ×N); weight and bias of a LayerNorm as one joint
    # block with cross terms (paper profile's choice) or as separate blocks (released code)
    dense_block_reduction: Literal["mean", "sum"] = "mean"
    dense_block_bias: Literal["joint", "separate"] = "joint"
    # L_drift: "ekfac" (the paper: τᵀĜτ with the reference set's EK-FAC) or "function" (issue 25: ‖J(x_r)·τ_T‖² and
    # ‖f(x_r; θ0+τ_S) − f(x_r; θ0)‖² on a fresh reference minibatch of drift_batch_size inputs each step;
    # training/function_drift.py); reference_augment: grayscale / scale / colour augmentation of those inputs
    drift: Literal["ekfac", "function"] = "ekfac"
    drift_batch_size: int = Field(32, ge=1)
    reference_augment: bool = False


@regime_config
class LoRAConfig(LoRASettings, Trainable, BaseTrainConfig):
    """LoRA fine-tuning (Hu et al., 2022)."""

    regime: Literal["lora"] = "lora"


@regime_config
class LoRALinearConfig(LoRASettings, Trainable, BaseTrainConfig):
    """LoRA in the tangent space (Tang et al., 2024)."""

    regime: Literal["lora-linear"] = "lora-linear"
    lora_linear_space: Literal["adapter", "weight"] = "adapter"  # adapter: tangent space of (A, B) at (A0, 0), i.e.
    #                                          only B trains (Tang et al. 2024); weight: f0 + J·(s·B·A), A and B train


@regime_config
class DeltaLoRAConfig(LoRASettings, DeltaSettings, Trainable, BaseTrainConfig):
    """DELTA with a LoRA student and a full fine-tuning linearized teacher."""

    regime: Literal["delta-lora"] = "delta-lora"
    delta_lora_teacher: Literal["full", "lora"] = "full"  # teacher: full FT (paper) / LoRA (authors' code: r 16,
    #                                                        α 16, teacher_lr 3e-4)
    teacher_lr: Optional[float] = Field(None, gt=0)  # the LoRA teacher's lr (None: lora_lr, else lr)
    lora_linear_space: Literal["adapter", "weight"] = "adapter"  # the LoRA teacher's tangent space (as lora-linear)


@regime_config
class AttnOnlyConfig(BaseTrainConfig):
    """Attention-only fine-tuning (Jin et al., 2025); the trainable set is the attention projections."""

    regime: Literal["attn-only"] = "attn-only"


@regime_config
class TaLoSConfig(Trainable, BaseTrainConfig):
    """TaLoS (Iurada et al., 2025): keep the least Fisher-sensitive fraction 1 − s of the entries trainable."""

    regime: Literal["talos"] = "talos"
    talos_sparsity: float = Field(0.9, ge=0, lt=1)  # s: fraction frozen (paper: 0.9)
    talos_rounds: int = Field(4, ge=1)  # mask calibration rounds, kept fraction (1 − s)^(r/R) (authors' code: 4)
    talos_examples: Optional[int] = Field(None, ge=1)  # calibration examples (None: the whole training split)
    talos_score: Literal["fisher", "logit"] = "fisher"  # log-likelihood Fisher / sampled-logit gradient (code)
    talos_exclude_zero: bool = False  # rank only entries with a non-zero score (dead ReLU units; not in the paper)


@regime_config
class TauJpConfig(InterferencePenalty, Trainable, BaseTrainConfig):
    """τJp (Yoshida et al., 2025): linear FT + λ·‖J·τ‖² on the other tasks' inputs."""

    regime: Literal["taujp"] = "taujp"
    # τJp (Yoshida et al.): own λ and form, defaults = the authors' (penalty_every applies)
    taujp_lambda: float = Field(0.1, ge=0)  # λ of τJp
    taujp_form: Literal["norm", "squared"] = "norm"  # norm: mean_x ‖J(x)τ‖ (authors); squared: mean_x ‖J(x)τ‖²
    taujp_reference: bool = True  # also penalise the drift on the suite's reference/control inputs (authors: ImageNet)
    taujp_batch_size: int = Field(32, ge=1)  # inputs drawn per step from each other task
    taujp_reduction: Literal["sum", "mean"] = "sum"  # over the other tasks (+ reference): Σ, or the τJp authors' mean
    hash_omit_defaults: ClassVar[tuple[str, ...]] = ("taujp_reduction",)  # config_hash: absent at the default


@regime_config
class TAKConfig(InterferencePenalty, Trainable, BaseTrainConfig):
    """TAK: linear FT + λ·Σ τᵀ KFAC_t′ τ over the other tasks' curvatures."""

    regime: Literal["tak"] = "tak"
    tak_lambda: float = Field(100.0, ge=0)  # λ of TAK (Porrello et al.; the authors' default)
    tak_projection_scale: float = Field(0.01, ge=0)  # TAK: the output projection's KFAC block ×this (authors: 0.01)


# ---- preference (DPO) regimes on causal LMs (training/dpo.py, training/dpo_distilled.py) -----------------------------
class DPOSettings(BaseModel):
    """The DPO loss −log σ(β·margin) (Rafailov et al., 2023; β = TRL's default)."""

    beta_dpo: float = Field(0.1, gt=0)


@regime_config
class DPOConfig(DPOSettings, Trainable, BaseTrainConfig):
    """DPO on the non-linear LM."""

    regime: Literal["dpo"] = "dpo"


@regime_config
class DPOLinearConfig(DPOSettings, Trainable, BaseTrainConfig):
    """DPO on the linearized LM f0 + J·τ."""

    regime: Literal["dpo-linear"] = "dpo-linear"


class DistilledDPOProfile(BaseModel):
    """Distilled DPO reads DELTA's switches (α sampling, student_ce_at, teacher_ce_at, kd_every) but no profile: the
    released code has no preference training, so a profile there would name nothing the authors ran."""

    @model_validator(mode="after")
    def _no_profile(self) -> "DistilledDPOProfile":
        if getattr(self, "profile", "paper") != "paper":
            raise ValueError(f"profile '{self.profile}' does not apply to regime '{self.regime}' (the authors' "
                             "released code has no DPO training): leave profile at 'paper' and set the switches "
                             "themselves (alpha_sampling, student_ce_at, teacher_ce_at)")
        return self


@regime_config
class DPODistilledConfig(DistilledDPOProfile, DPOSettings, DeltaSettings, Trainable, BaseTrainConfig):
    """Distilled DPO: a linearized DPO teacher distilled into the non-linear student along the α path (the drift
    weights β_T/β_S are read only by dpo-distilled-curvature)."""

    regime: Literal["dpo-distilled"] = "dpo-distilled"


@regime_config
class DPODistilledCurvatureConfig(DistilledDPOProfile, DPOSettings, DeltaSettings, Trainable, BaseTrainConfig):
    """Distilled DPO plus DELTA's curvature drift terms β_T·L_drift(τ_T), β_S·L_drift(τ_S)."""

    regime: Literal["dpo-distilled-curvature"] = "dpo-distilled-curvature"


@regime_config
class DPOMixedConfig(DPOSettings, Trainable, BaseTrainConfig):
    """DPO on several preference axes at once (the multi-task reference)."""

    regime: Literal["dpo-mixed"] = "dpo-mixed"
    dpo_mix_weights: Optional[list[float]] = None  # weight of each preference axis (None: all 1)


@regime_config
class DPOLoRAConfig(DPOSettings, LoRASettings, Trainable, BaseTrainConfig):
    """DPO with LoRA factors on the LM."""

    regime: Literal["dpo-lora"] = "dpo-lora"


@regime_config
class DPODistilledLoRAConfig(DistilledDPOProfile, DPOSettings, DeltaSettings, LoRASettings, Trainable, BaseTrainConfig):
    """Distilled DPO with a LoRA student (lora_rank, lora_alpha, lora_lr, lora_targets) and a full fine-tuning
    linearized teacher (lr)."""

    regime: Literal["dpo-distilled-lora"] = "dpo-distilled-lora"


#: The training configuration of any regime: validate a mapping with ``TypeAdapter(TrainConfig)`` (pydantic picks the
#: class by ``regime``), or build one with ``train_config(regime, **fields)``. Built from the registry.
TrainConfig = Annotated[Union[tuple(REGIME_CONFIGS.values())], Field(discriminator="regime")]  # type: ignore[valid-type]
_ADAPTER = TypeAdapter(TrainConfig)


def config_class(regime: str) -> type[BaseTrainConfig]:
    """The configuration class of ``regime``; one clear error for an unknown name."""
    if regime not in REGIME_CONFIGS:
        raise DeltaMergeError(f"unknown regime '{regime}' (known: {', '.join(sorted(REGIME_CONFIGS))})")
    return REGIME_CONFIGS[regime]


def regimes_with(field: str) -> list[str]:
    """The regimes whose configuration has ``field``."""
    return [r for r, cls in REGIME_CONFIGS.items() if field in cls.model_fields]


def check_fields_apply(regime: str, fields: Iterable[str]) -> None:
    """Every name in ``fields`` is a setting of ``regime`` (the one place this is checked: Python, YAML ``train:``
    sections, CLI flags); otherwise one error naming the regimes that have it."""
    cls = config_class(regime)
    for name in fields:
        if name not in cls.model_fields:
            owners = regimes_with(name)
            where = f"it belongs to: {', '.join(owners)}" if owners else "no regime has it"
            raise DeltaMergeError(f"training setting '{name}' does not apply to regime '{regime}' ({where})")


def parse_train_config(data: dict[str, Any]) -> BaseTrainConfig:
    """A mapping (YAML, results.json, vector metadata) → the configuration of the regime it names."""
    regime = data.get("regime")
    if regime is None:
        raise DeltaMergeError(f"a training configuration needs 'regime' (one of: {', '.join(sorted(REGIME_CONFIGS))})")
    check_fields_apply(str(regime), data)
    # The regime's own class (not the union), so that errors locate fields by their own names (the CLI turns those
    # into its flags, a YAML loader into the file's keys: InvalidSettings keeps the ValidationError for them).
    try:
        return REGIME_CONFIGS[str(regime)].model_validate(data)
    except ValidationError as exc:
        raise InvalidSettings(f"invalid training settings for regime '{regime}': {validation_message(exc)}",
                              exc) from None


def train_config(regime: str = "delta", **fields: Any) -> BaseTrainConfig:
    """The configuration of ``regime`` with ``fields`` set (the paper's defaults elsewhere); a field the regime does
    not read is an error."""
    return parse_train_config({**fields, "regime": regime})


def recipe_config(regime: str, **recipe: Any) -> BaseTrainConfig:
    """A suite's recipe (settings shared by all its regimes, e.g. β and LoRA's lr) for one regime: the fields the
    regime has are kept, the others belong to other regimes and are left out. A name no regime knows is an error."""
    unknown = [n for n in recipe if not regimes_with(n)]
    if unknown:
        raise DeltaMergeError(f"unknown training setting(s) {unknown} in a recipe (no regime has them)")
    fields = config_class(regime).model_fields
    return train_config(regime, **{k: v for k, v in recipe.items() if k in fields})


def with_overrides(cfg: BaseTrainConfig, overrides: dict[str, Any]) -> BaseTrainConfig:
    """``cfg`` with ``overrides`` applied and validated (a field the regime lacks, or a new regime, is an error)."""
    if "regime" in overrides and overrides["regime"] != cfg.regime:
        raise DeltaMergeError(f"an override cannot change the regime ('{cfg.regime}' → '{overrides['regime']}')")
    # exclude_unset: a profile named in the overrides fills every switch neither the recipe nor the user set
    return parse_train_config({**cfg.model_dump(exclude_unset=True), **overrides, "regime": cfg.regime})


def as_train_config(cfg: BaseTrainConfig | dict[str, Any]) -> BaseTrainConfig:
    """``cfg`` checked to be the configuration class of the regime it names (a mapping is parsed first)."""
    if isinstance(cfg, dict):
        return parse_train_config(cfg)
    if not isinstance(cfg, BaseTrainConfig):
        raise DeltaMergeError(f"a training configuration is expected (deltamerge.config.train_config), not "
                              f"{type(cfg).__name__}")
    if type(cfg) is not config_class(cfg.regime):
        raise DeltaMergeError(f"a {type(cfg).__name__} cannot configure regime '{cfg.regime}' (build it with "
                              f"train_config('{cfg.regime}', ...))")
    return cfg
