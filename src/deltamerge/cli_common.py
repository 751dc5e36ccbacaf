"""What every ``deltamerge`` command shares: the typer app, the error wrapper (``friendly``), output checks and locks,
and the RunConfig built from a YAML file plus flags. The commands live in ``cli.py`` and ``cli_artifacts.py``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import typer
from pydantic import ValidationError

from deltamerge.cli_errors import ErrorGroup, choice, hold, named_flags, set_debug
from deltamerge.config.merge import MERGE_PARAMS
from deltamerge.config.regimes import REGIME_CONFIGS
from deltamerge.errors import DeltaMergeError, InvalidSettings
from deltamerge.safeio import check_outputs, output_lock
from deltamerge.suites.registry import SUITES

# Valid names for the help texts, from the (torch-free) registries; `deltamerge regimes|methods|suites` describe them.
REGIME_NAMES = ", ".join(REGIME_CONFIGS)
METHOD_NAMES = ", ".join(MERGE_PARAMS)
SUITE_NAMES = ", ".join(n for n in SUITES if n != "yaml")  # "yaml" is reached by giving a .yaml file

PRESETS = ("quick", "full")

app = typer.Typer(cls=ErrorGroup, add_completion=False, no_args_is_help=True,
                  help="DELTA and baselines: fine-tune composable task vectors, merge them, evaluate them.")
assets_app = typer.Typer(no_args_is_help=True, help="Install the offline suites' weights and data.")
app.add_typer(assets_app, name="assets")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the traceback behind an error "
                                        "(also: DELTAMERGE_DEBUG=1)")) -> None:
    """DELTA and baselines: fine-tune composable task vectors, merge them, evaluate them."""
    set_debug(debug)


def friendly(fn: Callable) -> Callable:
    """Name the command's flags in validation errors; everything else that escapes is reported by ErrorGroup as one
    ``error:`` line with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from deltamerge.distributed import init

            init(quiet_workers=True)  # under torchrun: join the process group (no-op in one process)
            return fn(*args, **kwargs)
        except ValidationError as exc:
            raise named_flags(exc) from exc
        except InvalidSettings as exc:  # settings built from this command's flags: name the flags
            raise named_flags(exc.validation) from exc

    return wrapper


def _write_lock(out: Path, force: bool, also: tuple[Path, ...] = ()) -> None:
    """Check ``out`` (and companion files) may be written, then lock ``out`` for the rest of the command (a second
    process writing it gets a clear error) and check again under the lock."""
    check_outputs([out, *also], force)
    hold(output_lock(out.with_name(f"{out.name}.lock"), str(out)))
    check_outputs([out, *also], force)


def _preset(preset: Optional[str]) -> None:
    choice("--preset", preset, PRESETS)


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text is not None else None


def _suite_spec(suite: str) -> tuple[str, dict]:
    """A suite name, or a YAML suite file → ("yaml", {"file": absolute path})."""
    if suite.endswith((".yaml", ".yml")):
        path = Path(suite)
        if not path.is_file():
            raise DeltaMergeError(f"suite file not found: {suite}")
        return "yaml", {"file": str(path.resolve())}
    return suite, {}


def _yaml_scalar(text: str):
    """A suite option's value as YAML reads it (``normalize``, ``1``, ``[photos, more-photos]``; empty: "")."""
    import yaml

    return yaml.safe_load(text) if text.strip() else ""


def _run_config(suite: str, regimes: Optional[str], preset: Optional[str], out: Optional[Path], tasks: Optional[str],
                config: Optional[Path], merge_method: Optional[str] = None, extra_merges: Optional[str] = None,
                merge_param: Optional[list[str]] = None):
    """A RunConfig from the YAML file (if any) with the flags given on the command line taking precedence."""
    from deltamerge.config import RunConfig, load_yaml
    from deltamerge.config.merge import parse_merge_params

    name, options = _suite_spec(suite)
    cfg = load_yaml(config, RunConfig) if config is not None else RunConfig(suite=name)
    flags = {"regimes": _split(regimes), "preset": preset, "out": out, "tasks": _split(tasks),
             "merge_method": merge_method, "extra_merges": _split(extra_merges)}
    update = {"suite": name, **{k: v for k, v in flags.items() if v is not None}}
    if options:
        update["suite_options"] = {**(cfg.suite_options if cfg.suite == name else {}), **options}
    data = {**cfg.model_dump(exclude_unset=True), **update}  # unset stays unset (e.g. curvature.feature_transform)
    if merge_param:  # --merge-param applies to the run's merge method
        method = data.get("merge_method", cfg.merge_method)
        params = data.get("merge_params", {})
        data["merge_params"] = {**params, method: {**params.get(method, {}), **parse_merge_params(merge_param)}}
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise named_flags(exc) from None


def get_suite_checked(name: str):
    from deltamerge.suites import get_suite

    return get_suite(*_suite_spec(name))
