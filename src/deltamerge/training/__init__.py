"""Fine-tuning regimes (one file each) and the shared training loop."""

from deltamerge.training.regime import REGIMES, Regime, get_regime, trainable_names
from deltamerge.training import nonlinear, linear, delta  # noqa: F401  (registers the regimes)
from deltamerge.training import lora, lora_linear, delta_lora  # noqa: F401  (LoRA family)
from deltamerge.training.loop import train
from deltamerge.training import attn_only, talos, taujp, tak  # noqa: F401,E402  (registers the baselines)
from deltamerge.training import dpo, dpo_distilled  # noqa: F401,E402  (preference regimes on causal LMs)
from deltamerge.training.context import TrainContext

__all__ = ["REGIMES", "Regime", "TrainContext", "get_regime", "trainable_names", "train"]
