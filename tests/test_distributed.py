"""Data parallelism on torch.distributed (gloo, 2 CPU processes): a 2-rank run equals the one-process run.

The 2-rank jobs run ``tests/distributed_worker.py`` under ``python -m torch.distributed.run`` (torchrun) or as two
plain processes with torchrun's environment (to see what the surviving rank does when its peer dies or hangs, with no
agent killing it first).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from deltamerge import distributed as dist
from deltamerge.artifacts import load_artifact
from deltamerge.config import parse_train_config
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.evaluator import Evaluator
from deltamerge.training import train
from deltamerge.training.parallel import micro_batches

HERE = Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    src = str(HERE.parent / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "DELTAMERGE_NO_PROGRESS": "1",
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **extra}


def _torchrun(args: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), *args]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_rank(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("dist") / "two_rank.safetensors"
    proc = _torchrun(["equivalence", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out))


@pytest.fixture(scope="module")
def one_process():
    return worker.setup()


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rtol=1e-4, atol=1e-6) -> None:
    assert a.shape == b.shape, what
    assert torch.allclose(a, b, rtol=rtol, atol=atol), f"{what}: max |Δ| = {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("name,regime,overrides", worker.RUNS, ids=[r[0] for r in worker.RUNS])
def test_two_ranks_give_the_one_process_task_vector(two_rank, one_process, name, regime, overrides):
    """Global batch b on 2 ranks (× k micro-batches) = batch b in one process, same data order: same τ."""
    assert int(two_rank["world_size"]) == 2
    cfg = worker.train_config(regime, **{**overrides, "grad_accum_steps": 1})  # the plain one-process step
    for role, tv in worker.run(regime, one_process, cfg).items():
        assert tv.norm() > 0
        for n, t in tv.deltas.items():
            _close(two_rank[f"train/{name}/{role}/{n}"], t, f"{name} {role} {n}")


@pytest.mark.parametrize("regime", ["nonlinear", "linear", "delta", "taujp"])
def test_gradient_accumulation_equals_one_large_batch(one_process, regime):
    """k micro-batches (one optimiser step, each loss weighted 1/k, drift penalty counted once; one α and one
    other-task draw per step) = one batch."""
    extra = {"taujp_batch_size": 8} if regime == "taujp" else {}
    ref = worker.run(regime, one_process, worker.train_config(regime, **extra))
    for k in (2, 4):
        acc = worker.run(regime, one_process, worker.train_config(regime, grad_accum_steps=k, **extra))
        for role in ref:
            for n, t in ref[role].deltas.items():
                _close(acc[role].deltas[n], t, f"{regime} k={k} {role} {n}")
    assert ref[next(iter(ref))].meta["config_hash"] == acc[next(iter(acc))].meta["config_hash"]


def test_drift_penalty_counts_once_per_step_under_accumulation(one_process):
    """With a heavy drift penalty (β = 50, which visibly changes τ: β = 200 gives another τ), 4 micro-batches give
    the one-batch τ: the penalty, added on every micro-batch, enters the step with total weight 1, not k."""
    backbone, head, data, _, curv = one_process
    base = dict(beta_teacher=50.0, beta_student=50.0, steps=4)
    ref = train(backbone, head, data, worker.train_config("delta", **base), curv)
    acc = train(backbone, head, data, worker.train_config("delta", **base, grad_accum_steps=4), curv)
    heavier = train(backbone, head, data, worker.train_config("delta", **{**base, "beta_teacher": 200.0}), curv)
    for n, t in ref["teacher"].deltas.items():
        _close(acc["teacher"].deltas[n], t, f"teacher {n}")
    assert any((heavier["teacher"].deltas[n] - t).abs().max() > 1e-4 for n, t in ref["teacher"].deltas.items())


def _same_curvature(two_rank, prefix: str, kind: str, model, reference, cfg, dtype, factor_tol: dict,
                    penalty_rtol: float) -> None:
    """The 2-rank estimate stored under ``prefix`` = the one-process estimate: KFAC factors entry by entry; EK-FAC
    (and KFAC) through the quadratic form on random directions (eigenbases of nearly repeated eigenvalues are not
    unique, the matrix they represent is)."""
    from deltamerge.curvature import Curvature, LayerCurvature, estimate_curvature

    curv = estimate_curvature(model, reference, cfg)
    layers = [LayerCurvature(l.module, l.weight, l.bias, {k: two_rank[f"{prefix}/{kind}/{l.module}/{k}"]
                                                          for k in l.tensors}, l.joint) for l in curv.layers]
    got = Curvature.create(kind, layers, curv.base_fingerprint)
    if kind == "kfac":
        for layer, mine in zip(curv.layers, layers):
            for k, t in layer.tensors.items():
                _close(mine.tensors[k], t, f"{layer.module} {k}", **factor_tol)
    g = torch.Generator().manual_seed(3)
    params = dict(model.named_parameters())
    for _ in range(5):
        delta = {n: torch.randn(params[n].shape, generator=g, dtype=dtype) for n in curv.parameter_names}
        _close(got.penalty(delta), curv.penalty(delta), f"{prefix} {kind} penalty", rtol=penalty_rtol)


@pytest.mark.parametrize("kind", ["ekfac", "kfac"])
def test_two_rank_curvature_equals_one_process(two_rank, one_process, kind):
    """Reference set sharded 19 / 18 over 2 ranks, factors (and EK-FAC corrections) summed = one-process estimate."""
    backbone, _, _, reference, _ = one_process
    _same_curvature(two_rank, "curv", kind, backbone, reference, worker.curvature_configs()[kind], torch.float32,
                    {"atol": 1e-7}, 1e-5)


@pytest.mark.parametrize("kind", ["ekfac", "kfac"])
def test_two_rank_token_curvature_equals_one_process(two_rank, kind):
    """Token model (float64), padding masked and attention keys under KFAC-expand, 13 padded sentences sharded 7 / 6:
    the masked token counts and factors summed over ranks = the one-process estimate. EK-FAC to rtol 1e-5 as for the
    dense model (its eigenbases come from factors summed in another order), KFAC to 1e-9."""
    bert, sentences = worker.token_setup()
    _same_curvature(two_rank, "tokcurv", kind, bert, sentences, worker.token_curvature_configs()[kind],
                    torch.float64, {"rtol": 1e-6, "atol": 1e-10}, 1e-5 if kind == "ekfac" else 1e-9)


def test_two_rank_dense_blocks_equal_one_process(two_rank):
    """Dense LayerNorm blocks (exact probes) on a reference set sharded 7 / 6: the all-reduced sums / global N."""
    from deltamerge.curvature.dense_blocks import estimate_dense_blocks

    blocks = estimate_dense_blocks(*worker.dense_setup())
    assert [b.name for b in blocks] == ["ln1", "ln2"]
    for b in blocks:
        _close(two_rank[f"dense/{b.name}"], b.G, f"dense {b.name}", rtol=1e-5, atol=1e-7)


def test_sharded_evaluation_equals_one_process(two_rank, one_process):
    backbone, head, data, _, curv = one_process
    tv = train(backbone, head, data, worker.train_config("nonlinear"), curv)["main"]
    acc = Evaluator(batch_size=8).accuracy_along(backbone, data, head, tv, [0.5, 1.0])
    assert two_rank["eval/nonlinear"].tolist() == pytest.approx([acc[0.5], acc[1.0]], abs=1e-9)


def test_ranks_that_diverge_or_disagree_are_stopped(two_rank):
    """τ that differs between ranks (checked at checkpoints and at the end) and a file seen by some ranks only
    raise a DeltaMergeError on every rank instead of continuing silently."""
    assert int(two_rank["detected/diverged"]) == 1 and int(two_rank["detected/disagree"]) == 1


def test_micro_batches_keep_the_global_order_and_split_unevenly():
    idx = torch.arange(15)
    parts = [micro_batches(idx, 2, rk, 2) for rk in range(2)]
    assert [p.tolist() for p in parts[0]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [p.tolist() for p in parts[1]] == [[8, 9, 10, 11], [12, 13, 14]]


def test_batch_too_small_for_ranks_times_micro_batches_is_refused(one_process):
    backbone, head, data, _, _ = one_process
    with pytest.raises(DeltaMergeError, match="cannot be split"):
        train(backbone, head, data, worker.train_config("nonlinear", batch_size=3, grad_accum_steps=4))


def test_torchrun_without_a_process_group_is_refused(one_process, monkeypatch):
    """WORLD_SIZE > 1 but nobody called distributed.init(): each process would train the whole run alone."""
    backbone, head, data, _, _ = one_process
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DeltaMergeError, match="no process group"):
        train(backbone, head, data, worker.train_config("nonlinear"))


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.init() and dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()
    t = torch.ones(3)
    dist.all_reduce_tensors_([t])
    assert t.tolist() == [1.0, 1.0, 1.0]
    assert dist.shard_range(10, 1, 3) == (4, 7) and dist.shard_range(10, 0, 3) == (0, 4)
    monkeypatch.setenv(dist.TIMEOUT_ENV, "soon")
    with pytest.raises(DeltaMergeError, match="positive number of seconds"):
        dist.timeout_s()


# ---- a rank that dies or hangs -------------------------------------------------------------------------------------
def _finetune_args(tmp_path: Path, out: Path, resume: bool = False) -> list[str]:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(dict(regime="nonlinear", steps=6, batch_size=32, lr=1e-2, weight_decay=0.0,
                                       checkpoint_every=2, progress=False)))
    return ["finetune", "synthetic", "task0", "--regime", "nonlinear", "--out", str(out), "--config", str(cfg),
            *(["--resume"] if resume else [])]


def _two_plain_processes(args: list[str], timeout_s: int) -> list[subprocess.Popen]:
    """Two ranks with torchrun's environment but no torchrun agent (nobody kills the survivor for us)."""
    port = _free_port()
    procs = []
    for rk in range(2):
        env = _env(RANK=str(rk), LOCAL_RANK=str(rk), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), DELTAMERGE_DIST_TIMEOUT=str(timeout_s))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.parametrize("sig", ["KILL", "STOP"])
def test_dead_or_hung_rank_fails_the_job_with_a_clear_message_and_resume_works(tmp_path, sig):
    """Rank 1 is killed (or hangs: SIGSTOP) at step 3: rank 0 exits with one `error:` line naming the failed
    all-reduce (at once for a dead peer, after DELTAMERGE_DIST_TIMEOUT for a hung one); only the step-2 checkpoint
    is left (complete, loadable), no task vector, no temp file. After the kill, `deltamerge finetune --resume` under
    torchrun (2 ranks) continues from that checkpoint and gives the uninterrupted one-process result."""
    out = tmp_path / "vec.safetensors"
    timeout_s = 30  # per collective: on a loaded 2-core machine the ranks can reach the first one seconds apart
    procs = _two_plain_processes(["cli", "3", sig, "--", *_finetune_args(tmp_path, out)], timeout_s)
    try:  # a hang (no timeout) would hit this limit: start-up on a busy 2-core CPU alone can take a minute
        _, err = procs[0].communicate(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
    assert procs[0].returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "rank 0 of 2" in lines[0] and "all-reduce at step 3 failed" in lines[0], err[-2000:]
    assert "Traceback" not in err
    left = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors" or p.name.startswith("."))
    assert left == ["vec.checkpoint.safetensors"], left
    _, meta = load_artifact(tmp_path / "vec.checkpoint.safetensors", kind="checkpoint")
    assert meta["step"] == 2
    if sig == "STOP":
        return

    resumed = _torchrun(["cli", "-1", "KILL", "--", *_finetune_args(tmp_path, out, resume=True)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (tmp_path / "vec.checkpoint.safetensors").exists()
    from deltamerge.suites import get_suite
    from deltamerge.taskvector import TaskVector

    suite = get_suite("synthetic")
    backbone = suite.backbone()
    task = suite.tasks("quick", ["task0"])["task0"]
    cfg = parse_train_config(yaml.safe_load((tmp_path / "train.yaml").read_text()))
    ref = train(backbone, suite.head(backbone, task), task.train, cfg)["main"]
    got = TaskVector.load(out)
    for n, t in ref.deltas.items():
        _close(got.deltas[n], t, n)
