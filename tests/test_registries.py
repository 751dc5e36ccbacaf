"""Registries come in pairs that cannot drift: each regime's implementation is bound to its configuration class,
each merge method to its declared parameter model; unions and name lists are built from the registries."""

from __future__ import annotations

import typing

import pytest

from deltamerge.config import REGIME_CONFIGS, RunConfig, TrainConfig, check_fields_apply, train_config
from deltamerge.errors import DeltaMergeError


def test_each_regime_is_bound_to_its_config_class_and_listed_in_its_order():
    from deltamerge.training import REGIMES

    assert list(REGIMES) == list(REGIME_CONFIGS)
    for name, cls in REGIMES.items():
        assert cls.config_cls is REGIME_CONFIGS[name]


def test_the_train_config_union_is_the_registry():
    union = typing.get_args(typing.get_args(TrainConfig)[0])
    assert list(union) == list(REGIME_CONFIGS.values())


def test_a_regime_without_a_config_class_is_refused_at_registration():
    from deltamerge.training.regime import REGIMES, Regime, register

    class Orphan(Regime):
        name = "orphan"

    with pytest.raises(DeltaMergeError, match="unknown regime 'orphan'"):
        register(Orphan)
    assert "orphan" not in REGIMES


def test_field_check_is_the_same_from_python_and_from_a_run_file():
    with pytest.raises(DeltaMergeError) as py:
        train_config("nonlinear", beta_student=1.0)
    with pytest.raises(DeltaMergeError) as direct:
        check_fields_apply("nonlinear", ["beta_student"])
    with pytest.raises(Exception) as run:
        RunConfig(suite="synthetic", train={"nonlinear": {"beta_student": 1.0}})
    assert str(py.value) == str(direct.value) and str(direct.value) in str(run.value)
    assert "belongs to: delta" in str(direct.value)
