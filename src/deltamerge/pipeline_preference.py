"""The preference pipeline (paper Sec. 5, Fig. 10): per axis × regime a DPO task vector → Affine-2 sweep
θ0 + τ_1 + λ2·τ_2 over ``lambda_grid`` → preference accuracy on held-out pairs and rewards of greedy generations on
held-out prompts → results.json, REPORT.md and the Pareto figure.

``dpo-mixed`` trains one vector on every axis at once (a single point, no sweep); the other regimes train one vector
per axis. DPO-Mixed gets the same optimisation per axis as the two-vector methods: A axes' pairs pooled, it runs A×
the recipe's steps (and warm-up) at the same batch size, so each axis contributes as many pairs (in expectation) as
it does to its own vector (``mixed_config``); an explicit ``train: {dpo-mixed: {steps: …}}`` is kept as given.
Vectors are reused when their file exists with the same configuration (runs resume).

The sweep runs on the training device (the LM is moved there even when every vector was reused); margins,
generation and the reward models build their tensors on the LM's device (``evaluation/preference.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from deltamerge import distributed as dist
from deltamerge import rundir
from deltamerge.artifacts import write_json
from deltamerge.config import BaseTrainConfig, RunConfig, resolve_device, with_overrides
from deltamerge.data import ArrayDataset, Task
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.preference import Generator, accuracy, margins_sweep, model_device
from deltamerge.linearize import FunctionalModel
from deltamerge.run_guard import claim_run_dir
from deltamerge.safeio import atomic_write_text
from deltamerge.stages import log
from deltamerge.suites.preference_base import PreferenceData, PreferenceSuite
from deltamerge.suites.preference_data import encode_prompts
from deltamerge.training.preference import with_prefix
from deltamerge.training.regime import get_regime, trainable_names
from deltamerge.workspace import Workspace

MIXED = "dpo-mixed"
DEFAULT_CLASSIFICATION_REGIMES = ["nonlinear", "linear", "delta"]


def concat(datasets: list[ArrayDataset]) -> ArrayDataset:
    """Rows of every dataset, in order (labels keep each row's axis)."""
    keys = datasets[0].inputs.keys()
    return ArrayDataset({k: torch.cat([d.inputs[k] for d in datasets]) for k in keys},
                        torch.cat([d.labels for d in datasets]))


def _regimes(cfg: RunConfig, suite: PreferenceSuite) -> list[str]:
    regimes = suite.default_regimes if cfg.regimes == DEFAULT_CLASSIFICATION_REGIMES else list(cfg.regimes)
    for r in regimes:
        if not trains_on_pairs(r):
            raise DeltaMergeError(f"regime '{r}' does not train on preference pairs (suite {suite.name} takes "
                                  f"{', '.join(suite.default_regimes)}, dpo-lora and dpo-distilled-lora)")
    return regimes


def trains_on_pairs(regime: str) -> bool:
    """Whether ``regime`` (a registered one) trains on preference pairs: the regimes that declare they read no
    classification head (``Regime.needs_head``) score an LM's log-probabilities of chosen vs rejected responses."""
    return not get_regime(regime).needs_head


def mixed_config(tcfg: BaseTrainConfig, axes: int, overrides: dict) -> BaseTrainConfig:
    """DPO-Mixed's configuration: the recipe's steps and warm-up × the number of axes (same pairs seen per axis as a
    per-axis vector, same batch size and schedule shape); steps given in the run's overrides are kept."""
    if "steps" in overrides:
        return tcfg
    update = {"steps": tcfg.steps * axes}
    if "warmup_steps" not in overrides:
        update["warmup_steps"] = tcfg.warmup_steps * axes
    return with_overrides(tcfg, update)


def train_vectors(cfg: RunConfig, suite: PreferenceSuite, backbone, data: PreferenceData, regimes: list[str],
                  out: Path, force: bool = False) -> dict[str, dict[str, object]]:
    """regime → {axis (or "mixed") → task vector of the regime's output role}."""
    vectors: dict[str, dict[str, object]] = {}
    ws = Workspace(suite, cfg.preset, out, backbone=backbone)  # no classification tasks: each axis is a task
    curvature = None
    if any(get_regime(r).needs_curvature for r in regimes):  # dpo-distilled-curvature only (off in the paper)
        curvature = ws.curvature(cfg)
    for regime in regimes:
        tcfg = with_overrides(suite.train_config(regime, cfg.preset), cfg.train.get(regime, {}))
        if regime == MIXED:
            tcfg = mixed_config(tcfg, len(data.axes), cfg.train.get(regime, {}))
        tasks = [Task("mixed", [], concat([a.train for a in data.axes]), concat([a.val for a in data.axes]),
                      concat([a.test for a in data.axes]))] if regime == MIXED else \
            [Task(a.name, [], a.train, a.val, a.test) for a in data.axes]
        vectors[regime] = {}
        for task in tasks:
            log(f"{regime}: {task.name} ({len(task.train)} pairs, {tcfg.steps} steps, batch {tcfg.batch_size})")
            vecs = ws.train(task, tcfg, curvature if get_regime(regime).needs_curvature else None, force=force)
            vectors[regime][task.name] = vecs[get_regime(regime).output_role]
    return vectors


def score_point(method: str, lam: float | None, margins: dict[str, torch.Tensor], responses: list[str],
                data: PreferenceData) -> dict:
    rewards = {a.name: a.reward(data.prompts, responses) for a in data.axes}
    return {"method": method, "lambda2": lam,
            "pref_acc": {a: accuracy(m) for a, m in margins.items()},
            "pref_acc_mean": sum(accuracy(m) for m in margins.values()) / len(margins),
            "reward": {a: sum(r) / len(r) for a, r in rewards.items()},
            "samples": [{"prompt": p.text, "response": r} for p, r in zip(data.prompts[:4], responses[:4])]}


def sweep(suite: PreferenceSuite, backbone, data: PreferenceData, vectors: dict, lambdas: list[float]) -> list[dict]:
    """Every method's points: θ0, each regime's Affine-2 mixes over ``lambdas``, DPO-Mixed's single model."""
    names = sorted({n for per in vectors.values() for v in per.values() for n in v.deltas})
    model = FunctionalModel(backbone, names)
    device = model_device(model)  # where training left the LM: every tensor below is built there
    for a in data.axes:  # reward models score on the same device (loaded there on first use)
        if hasattr(a.reward, "to"):
            a.reward.to(device)
    gen = Generator(backbone, model, suite.max_new_tokens)
    prompts = encode_prompts(backbone.tokenizer, [p.text for p in data.prompts], data.system)
    points = []
    zero = {n: torch.zeros_like(model.base[n]) for n in names}
    log("evaluating θ0")
    base_margins = {a.name: margins_sweep(model, "nonlinear", zero, None, [0.0], a.test)[0.0] for a in data.axes}
    points.append(score_point("pre-trained", None, base_margins, gen.generate(prompts, "nonlinear", None), data))
    first, second = data.axes[0].name, data.axes[1].name
    for regime, per in vectors.items():
        full = lambda v: {n: v.deltas[n].to(device) if n in v.deltas else zero[n] for n in names}  # noqa: E731
        if regime == MIXED:
            tau = full(per["mixed"])
            margins = {a.name: margins_sweep(model, "nonlinear", tau, None, [0.0], a.test)[0.0] for a in data.axes}
            points.append(score_point(regime, None, margins, gen.generate(prompts, "nonlinear", tau), data))
            continue
        kind = per[first].kind
        t1, t2 = full(per[first]), full(per[second])
        by_axis = {a.name: margins_sweep(model, kind, t1, t2, lambdas, a.test) for a in data.axes}
        for lam in lambdas:
            t0 = time.perf_counter()
            tau = {n: t1[n] + lam * t2[n] for n in names}
            responses = gen.generate(prompts, kind, tau)
            points.append(score_point(regime, lam, {a: m[lam] for a, m in by_axis.items()}, responses, data))
            log(f"{regime} λ2={lam}: pref acc {points[-1]['pref_acc']}, reward {points[-1]['reward']} "
                f"({time.perf_counter() - t0:.0f} s)")
    return points


def controls(suite: PreferenceSuite, preset: str, backbone, data: PreferenceData, vectors: dict,
             points: list[dict]) -> dict:
    """Noise floor and non-linearity beside the methods (evaluation/pref_controls.py): temperature-only edits per
    axis; per method point (λ2 in ``suite.control_lambdas``) the random band of vectors of its norm over its trained
    tensors; per trained vector
    ‖f(θ0+τ) − f_lin(θ0+τ)‖ on its axis' held-out pairs."""
    from deltamerge.evaluation import pref_controls as pc

    names = sorted({n for per in vectors.values() for v in per.values() for n in v.deltas} |
                   set(trainable_names(backbone, "default")))
    model = FunctionalModel(backbone, names)
    zero = {n: torch.zeros_like(model.base[n]) for n in names}
    full = lambda v: {n: v.deltas.get(n, zero[n]) for n in names}  # noqa: E731
    try:
        temperature = {a.name: pc.temperature_control(model, a.test) for a in data.axes}
    except DeltaMergeError as exc:  # no trainable final norm: no temperature control, say why
        log(f"no temperature control: {exc}")
        temperature = {}
    out: dict = {"temperature": temperature, "random_k": suite.control_random(preset), "random": [],
                 "nonlinearity": [], "judges": data.meta.get("judges"), "judge_kind": data.meta.get("judge")}
    log(f"temperature-only control: {out['temperature']}")
    first, second = data.axes[0].name, data.axes[1].name
    for regime, per in vectors.items():
        for axis, v in per.items():
            test = next((a.test for a in data.axes if a.name == axis), data.axes[0].test)
            n = min(len(test), suite.nonlinearity_pairs)
            test = ArrayDataset({k: t[:n] for k, t in test.inputs.items()}, test.labels[:n])
            out["nonlinearity"].append({"method": regime, "vector": axis, **pc.nonlinearity(model, test, full(v))})
        if out["random_k"] <= 0:
            continue
        lams = suite.control_lambdas
        for pt in (p for p in points if p["method"] == regime and (lams is None or p["lambda2"] is None
                                                                   or p["lambda2"] in lams)):
            key = "mixed" if regime == MIXED else None
            tau = full(per[key]) if key else {n: full(per[first])[n] + pt["lambda2"] * full(per[second])[n]
                                              for n in names}
            trained = sorted({n for v in per.values() for n in v.deltas})
            norm, kind = pc.global_norm(tau), next(iter(per.values())).kind
            band = {a.name: pc.random_band(model, kind, trained, norm, a.test, out["random_k"]) for a in data.axes}
            out["random"].append({"method": regime, "lambda2": pt["lambda2"], "norm": norm,
                                  "acc": pt["pref_acc"], "band": band})
            log(f"{regime} λ2={pt['lambda2']}: random band {band}")
    return out


def run_preference(cfg: RunConfig, suite: PreferenceSuite, force: bool = False) -> dict:
    """The whole preference pipeline into ``cfg.out`` (results.json, REPORT.md, figures/pareto.png); the run
    directory is claimed (locked, same configuration or ``force``) as in ``pipeline.run``."""
    regimes = _regimes(cfg, suite)
    suite.check_task_names(cfg.tasks)
    for r in regimes:  # every regime's settings before anything trains (DPO pair batches are not split yet)
        tcfg = with_overrides(suite.train_config(r, cfg.preset), cfg.train.get(r, {}))
        if tcfg.grad_accum_steps > 1:
            raise DeltaMergeError(f"train.{r}: grad_accum_steps {tcfg.grad_accum_steps} — the DPO regimes do not "
                                  "support gradient accumulation yet: use grad_accum_steps 1 (and a smaller "
                                  "batch_size if memory is short)")
    with claim_run_dir(Path(cfg.out), cfg, force):
        return _run_preference(cfg, suite, regimes, force)


def _run_preference(cfg: RunConfig, suite: PreferenceSuite, regimes: list[str], force: bool) -> dict:
    from deltamerge.report.pareto import pareto_figure, preference_report

    out = Path(cfg.out)
    atomic_write_text(out / rundir.CONFIG, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    t_start = time.perf_counter()
    log(f"suite {suite.name} ({cfg.preset}): loading the LM and the preference data")
    backbone = suite.backbone(cfg.preset)
    data = suite.preference_data(cfg.preset, backbone)
    for a in data.axes:  # frozen leading blocks: their output is computed once per pair, not at every step
        a.train, a.val, a.test = (with_prefix(backbone, d) for d in (a.train, a.val, a.test))
    if len(data.axes) != 2:
        raise DeltaMergeError(f"Affine-2 mixing needs exactly two preference axes, suite has {len(data.axes)}")
    vectors = train_vectors(cfg, suite, backbone, data, regimes, out, force)
    t_train = time.perf_counter() - t_start
    # the sweep runs on the training device, also when every vector was reused and nothing moved the LM there
    first = with_overrides(suite.train_config(regimes[0], cfg.preset), cfg.train.get(regimes[0], {}))
    backbone.to(resolve_device(first.device))
    points = sweep(suite, backbone, data, vectors, suite.lambda_grid)
    ctl = controls(suite, cfg.preset, backbone, data, vectors, points)
    results = {
        "kind": "preference", "suite": suite.name, "preset": cfg.preset, "backbone": backbone.name,
        "trainable_tensors": len(trainable_names(backbone, "default")),
        "trainable_parameters": sum(p.numel() for n, p in backbone.named_parameters()
                                    if n in set(trainable_names(backbone, "default"))),
        "axes": [{"name": a.name, "reward": a.reward_name, "train_pairs": len(a.train), "test_pairs": len(a.test),
                  "description": a.description} for a in data.axes],
        "held_out_prompts": len(data.prompts), "lambda_grid": suite.lambda_grid, "regimes": regimes,
        "train_seconds": {r: {t: v.meta.get("train_seconds") for t, v in per.items()} for r, per in vectors.items()},
        "seconds": {"train_and_load": round(t_train, 1), "total": round(time.perf_counter() - t_start, 1)},
        "points": points, "controls": ctl,
    }
    write_json(out / rundir.RESULTS, results)
    if dist.is_main():  # torchrun: rank 0 alone draws (the evaluation above runs, unsharded, on every rank)
        pareto_figure(results, out / "figures" / "pareto.png")
    from deltamerge.evaluation.pref_controls import controls_table

    atomic_write_text(out / "REPORT.md", preference_report(results, "figures/pareto.png") + "\n" + controls_table(ctl))
    log(f"done in {results['seconds']['total']:.0f} s: {out / 'REPORT.md'}")
    return results
