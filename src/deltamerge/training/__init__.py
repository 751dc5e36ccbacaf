"""Fine-tuning regimes (one file each) and the shared training loop.

Every module of this package is imported here; a regime module registers its class (``@register``), so a new
regime is a new file here plus its configuration class in ``config/regimes.py``. ``REGIMES`` is listed in the order
of the configuration registry (``REGIME_CONFIGS``). A regime is an objective × a parametrization × a space: DELTA's
Algorithm 1 is written once (``delta.py``) over an objective (``objective.py``: CE or DPO), every role's τ is dense or
LoRA factors (``parametrization.py``), so a new combination is a registration of a few lines."""

import importlib
import pkgutil

from deltamerge.config import REGIME_CONFIGS
from deltamerge.training.regime import REGIMES, Regime, get_regime, trainable_names
from deltamerge.training.loop import train
from deltamerge.training.context import TrainContext

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
for _name in [n for n in REGIME_CONFIGS if n in REGIMES]:  # one listing order: the configurations'
    REGIMES[_name] = REGIMES.pop(_name)

__all__ = ["REGIMES", "Regime", "TrainContext", "get_regime", "trainable_names", "train"]
