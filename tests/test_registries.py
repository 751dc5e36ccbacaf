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


def test_one_suite_registration_carries_its_assets():
    """SUITES (suites/registry.py) and SUITE_ASSETS / OPTIONAL_ASSETS (assets/registry.py) are views of the one
    catalogue (assets/catalogue.py): a suite's class and its assets are registered together, once."""
    from deltamerge.assets import catalogue
    from deltamerge.assets.registry import ASSETS, OPTIONAL_ASSETS, SUITE_ASSETS
    from deltamerge.suites.registry import SUITES

    assert SUITES == {n: e.target for n, e in catalogue.SUITE_CATALOGUE.items()}
    assert SUITE_ASSETS == {n: list(e.assets) for n, e in catalogue.SUITE_CATALOGUE.items() if e.assets}
    assert OPTIONAL_ASSETS == {n: list(e.optional_assets) for n, e in catalogue.SUITE_CATALOGUE.items()
                               if e.optional_assets}
    assert set(SUITE_ASSETS) | set(OPTIONAL_ASSETS) <= set(SUITES)  # no assets for a suite that does not exist
    assert {a for names in [*SUITE_ASSETS.values(), *OPTIONAL_ASSETS.values()] for a in names} <= set(ASSETS)
    assert SUITE_ASSETS["vision-mini"][0] == "efficientnet-lite0" and "broad-photos" in OPTIONAL_ASSETS["vision-mini"]


def test_listing_the_suites_does_not_import_the_asset_loaders():
    """The catalogue sits in the asset package, whose loaders (numpy, PIL) are imported only on first use: the CLI's
    start stays as light as when the suite names were a table of their own."""
    import subprocess
    import sys

    code = ("import sys; import deltamerge.cli_common; "
            "print(sorted(m for m in ('numpy', 'torch', 'deltamerge.assets.loaders') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
