"""Dense curvature blocks (LayerNorms, class embedding; DELTA's dense_norm_blocks / profile: released) against
independent computations: exact blocks vs a jacrev GGN, MC convergence, the penalty vs a jvp, training end to end,
artifacts and errors."""

import warnings

import pytest
import torch
from torch.func import functional_call, jacrev, jvp, vmap

from deltamerge.backbones.base import Head
from deltamerge.backbones.toy import ToyMLP, ToyTransformer
from deltamerge.config import CurvatureConfig, RunConfig, config_hash, train_config
from deltamerge.curvature import Curvature, estimate_curvature
from deltamerge.curvature.dense_blocks import DenseBlock, estimate_dense_blocks
from deltamerge.data import ArrayDataset, Task
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import apply_transform
from deltamerge.linearize import FunctionalModel
from deltamerge.training import train
from deltamerge.training.regime import get_regime, trainable_names


def _tokens(n=12, seed=0, length=6, pad_from=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[pad_from:, -2:] = 0  # some examples padded
    return {"input_ids": ids, "attention_mask": mask}


def _ggn(backbone, names, inputs, transform="identity"):
    """Independent: (1/N) Σ_n J_nᵀJ_n of g = T∘f w.r.t. ``names`` (flattened, concatenated) from jacrev."""
    params = dict(backbone.named_parameters())

    def f(ps, x):
        one = {k: v.unsqueeze(0) for k, v in x.items()} if isinstance(x, dict) else x.unsqueeze(0)
        return apply_transform(functional_call(backbone, dict(zip(names, ps)), (one,)), transform)[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(tuple(params[n].detach() for n in names), inputs)
    j = torch.cat([t.flatten(2) for t in jac], dim=2)  # [N, D, d_p]
    return torch.einsum("ndp,ndq->pq", j, j) / j.shape[0]


def _cfg(**kw):
    return CurvatureConfig(**{"probes": "exact", "batch_size": 5, "progress": False, **kw})


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- (a) exact blocks = the jacrev GGN ------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["identity", "normalize"])
def test_exact_blocks_equal_the_jacrev_ggn_on_a_transformer(transform):
    torch.manual_seed(0)
    bb = ToyTransformer().double()
    x = _tokens()
    blocks = estimate_dense_blocks(bb, x, _cfg(feature_transform=transform))
    assert [b.name for b in blocks] == ["ln1", "ln2"]
    for b in blocks:
        assert b.params == [f"{b.name}.weight", f"{b.name}.bias"] and b.G.shape == (16, 16)
        want = _ggn(bb, b.params, x, transform)
        assert (b.G - want).abs().max().item() < 1e-12 * max(1.0, want.abs().max().item())


def test_exact_blocks_on_a_tiny_clip_include_the_class_embedding():
    from transformers import CLIPConfig

    from deltamerge.backbones.clip import CLIPVision

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)
    text = dict(vocab_size=30, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16)
    bb = CLIPVision.from_config(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).double()
    groups = bb.dense_block_groups()
    assert "vision_model.embeddings.class_embedding" in groups and "vision_model.post_layernorm" in groups
    assert sum(n.endswith("layer_norm1") or n.endswith("layer_norm2") for n in groups) == 2
    x = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    blocks = estimate_dense_blocks(bb, x, _cfg(batch_size=4))
    assert len(blocks) == len(groups) == 5
    for b in blocks:
        want = _ggn(bb, b.params, x)
        assert (b.G - want).abs().max().item() < 1e-12 * max(1.0, want.abs().max().item()), b.name


# ---- (b) MC probes converge to the exact block -------------------------------------------------------------------
def test_mc_blocks_converge_to_the_exact_block():
    torch.manual_seed(0)
    bb = ToyTransformer().double()
    x = _tokens(n=8)
    exact = {b.name: b.G for b in estimate_dense_blocks(bb, x, _cfg())}
    errs = []
    for k in (4, 64, 1024):
        mc = estimate_dense_blocks(bb, x, _cfg(probes="mc", mc_samples=k, seed=3))
        errs.append(max(_rel(b.G, exact[b.name]) for b in mc))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05, errs


# ---- (c) the penalty = Σ_n ‖J_p τ_p‖² / N by a jvp -----------------------------------------------------------------
def test_dense_penalty_equals_the_jvp_drift_and_its_gradient_is_2G_tau():
    torch.manual_seed(0)
    bb = ToyTransformer().double()
    x = _tokens()
    blocks = estimate_dense_blocks(bb, x, _cfg())
    curv = Curvature.create("ekfac", [], "fp", {}, blocks)
    params = dict(bb.named_parameters())
    names = [p for b in blocks for p in b.params]
    tau = {n: 0.3 * torch.randn_like(params[n]) for n in names}
    tau["q.weight"] = torch.randn_like(params["q.weight"])  # not covered by this curvature: ignored

    def f(ps):
        return functional_call(bb, ps, (x,))

    def drift(group):  # mean_n ‖J_p(x_n) τ_p‖², forward-mode over the group's parameters only
        _, jt = jvp(f, ({n: params[n].detach() for n in group},), ({n: tau[n] for n in group},))
        return jt.square().sum() / jt.shape[0]

    want = sum(drift(b.params) for b in blocks)  # block-diagonal: Σ over groups, no cross-group terms
    got = curv.penalty(tau)
    assert abs(got.item() - want.item()) < 1e-12 * want.item()
    one = {n: tau[n] for n in blocks[0].params}  # one group alone
    assert abs(curv.penalty(one).item() - drift(blocks[0].params).item()) < 1e-12
    # a parameter of a group missing from τ counts as zero
    half = {blocks[0].params[0]: tau[blocks[0].params[0]]}
    assert abs(curv.penalty(half).item() - drift(blocks[0].params[:1]).item()) < 1e-12
    t = {n: tau[n].clone().requires_grad_(True) for n in blocks[1].params}
    curv.penalty(t).backward()
    g = torch.cat([t[n].grad.reshape(-1) for n in blocks[1].params])
    v = torch.cat([tau[n].reshape(-1) for n in blocks[1].params])
    assert torch.allclose(g, 2 * blocks[1].G @ v, atol=1e-12)


# ---- token padding and the vmap fallback -----------------------------------------------------------------------
def test_blocks_do_not_depend_on_the_padded_length():
    torch.manual_seed(0)
    bb = ToyTransformer().double()
    x = _tokens(n=6, pad_from=0)
    longer = {"input_ids": torch.cat([x["input_ids"], torch.zeros(6, 5, dtype=torch.long)], 1),
              "attention_mask": torch.cat([x["attention_mask"], torch.zeros(6, 5, dtype=torch.long)], 1)}
    a = estimate_dense_blocks(bb, x, _cfg())
    b = estimate_dense_blocks(bb, longer, _cfg())
    for u, v in zip(a, b):
        assert torch.allclose(u.G, v.G, atol=1e-12)


class _ItemTransformer(ToyTransformer):
    """Python control flow on a tensor value: torch.func.vmap cannot batch it."""

    def forward(self, inputs):
        out = super().forward(inputs)
        return out * 2.0 if float(out.detach().abs().sum()) >= 0 else out


def test_models_vmap_cannot_batch_fall_back_to_a_loop_with_the_same_numbers():
    torch.manual_seed(0)
    plain = ToyTransformer().double()
    torch.manual_seed(0)
    odd = _ItemTransformer().double()
    x = _tokens(n=5)
    with pytest.warns(UserWarning, match="falling back"):
        got = estimate_dense_blocks(odd, x, _cfg(batch_size=2))
    for b, ref in zip(got, estimate_dense_blocks(plain, x, _cfg(batch_size=2))):
        assert torch.allclose(b.G, 4.0 * ref.G, atol=1e-12)  # features ×2 → GGN ×4


# ---- curvature integration: estimate, artifact, errors -------------------------------------------------------------
def test_estimate_curvature_adds_blocks_only_on_request_and_round_trips(tmp_path):
    torch.manual_seed(0)
    bb = ToyTransformer()
    x = _tokens()
    plain = estimate_curvature(bb, x, _cfg())
    dense = estimate_curvature(bb, x, _cfg(dense_blocks=True))
    assert plain.dense == [] and [b.name for b in dense.dense] == ["ln1", "ln2"]
    assert dense.meta["config"]["dense_blocks"] is True and plain.meta["config"]["dense_blocks"] is False
    for a, b in zip(plain.layers, dense.layers):  # the Kronecker-factored layers are the same estimate
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert {"ln1.weight", "ln2.bias"} <= set(dense.parameter_names)
    assert not {"ln1.weight"} & set(plain.parameter_names)
    # config_hash: unchanged by the new field at its default (cached curvatures stay valid)
    assert config_hash(_cfg()) == config_hash(_cfg(dense_blocks=False)) != config_hash(_cfg(dense_blocks=True))
    path = dense.save(tmp_path / "c.safetensors")
    back = Curvature.load(path, dense.base_fingerprint, dict(bb.named_parameters()))
    assert [b.name for b in back.dense] == ["ln1", "ln2"] and "dense" not in back.meta
    for a, b in zip(dense.dense, back.dense):
        assert a.params == b.params and a.shapes == b.shapes and torch.equal(a.G, b.G)
    tau = {n: torch.randn_like(p) for n, p in bb.named_parameters()}
    assert torch.allclose(back.penalty(tau), dense.penalty(tau))
    assert torch.allclose(back.penalty(tau, batched=False), dense.penalty(tau))
    other = ToyTransformer(d=12, heads=2)  # LayerNorms of another width: refused by shape
    with pytest.raises(DeltaMergeError, match="shape"):
        Curvature.load(path, None, {**dict(other.named_parameters()), **{k: v for k, v in bb.named_parameters()
                                                                         if not k.startswith("ln")}})
    plain_path = plain.save(tmp_path / "p.safetensors")
    assert Curvature.load(plain_path).dense == []


def _data(n=48, seed=0):
    x = _tokens(n=n, seed=seed)
    return ArrayDataset(x, (x["input_ids"][:, 0] > 9).long())


def _tcfg(**kw):
    return train_config("delta", **{**dict(steps=4, batch_size=16, lr=1e-2, progress=False, beta_teacher=1.0,
                                           beta_student=1.0, weight_decay=0.0), **kw})


def test_a_run_that_needs_dense_blocks_refuses_a_curvature_without_them():
    torch.manual_seed(0)
    bb, head = ToyTransformer(), Head(torch.randn(2, 8))
    curv = estimate_curvature(bb, _tokens(), _cfg())
    with pytest.raises(DeltaMergeError, match="dense_norm_blocks .*no dense blocks.*dense_blocks: true"):
        train(bb, head, _data(), _tcfg(profile="released"), curvature=curv)
    # no LayerNorm in the model: nothing to add, the released profile runs without dense blocks
    mlp = ToyMLP()
    mlp_curv = estimate_curvature(mlp, torch.randn(16, 8), _cfg())
    x = torch.randn(32, 8)
    out = train(mlp, Head(torch.randn(2, 6)), ArrayDataset(x, (x[:, 0] > 0).long()), _tcfg(profile="released"),
                curvature=mlp_curv)
    assert out["student"].meta["config"]["dense_norm_blocks"] is True


# ---- (d) training: LayerNorms move with dense_norm_blocks, stay put without -------------------------------------
def test_released_profile_trains_layernorms_under_their_dense_penalty():
    torch.manual_seed(0)
    bb, head = ToyTransformer(), Head(torch.randn(2, 8))
    curv = estimate_curvature(bb, _tokens(n=24), _cfg(dense_blocks=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # LayerNorms are covered: no "no curvature block" warning
        out = train(bb, head, _data(), _tcfg(profile="released"), curvature=curv)
    ln = ["ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"]
    for role in ("student", "teacher"):
        deltas = out[role].deltas
        assert all(n in deltas and deltas[n].abs().sum() > 0 for n in ln), role
        assert "embed.weight" not in deltas and "pos" not in deltas
    off = train(bb, head, _data(), _tcfg(profile="released", dense_norm_blocks=False), curvature=curv)
    for role in ("student", "teacher"):
        assert all(off[role].deltas.get(n, torch.zeros(1)).abs().sum() == 0 for n in ln)
        assert off[role].norm() > 0


def test_the_drift_weights_dense_blocks_by_dense_block_scale():
    torch.manual_seed(0)
    bb, head = ToyTransformer(), Head(torch.randn(2, 8))
    curv = estimate_curvature(bb, _tokens(), _cfg(dense_blocks=True))
    cfg = _tcfg(dense_norm_blocks=True, dense_block_scale=7.0)
    from deltamerge.curvature.dense_blocks import dense_trainable

    names = dense_trainable(bb, trainable_names(bb, "default"), curv)
    assert {"ln1.weight", "ln2.bias"} <= set(names) and "embed.weight" not in names
    reg = get_regime("delta")(FunctionalModel(bb, names), head, cfg, curv)
    tau = {n: torch.randn_like(p) for n, p in reg.model.base.items()}
    lin = {n: t for n, t in tau.items() if not n.startswith("ln")}
    dense = sum(b.penalty(tau) for b in curv.dense)
    assert torch.allclose(reg.teacher_drift(tau, 0), curv.penalty(lin) + 7.0 * dense, rtol=1e-5)
    assert train_config("delta", profile="released").dense_block_scale == 10.0


def test_dense_block_parameters_count_as_covered_only_where_the_blocks_are_used(monkeypatch):
    import deltamerge.model

    monkeypatch.setattr(deltamerge.model, "_REPORTED", set())  # the warning is said once per set of names
    torch.manual_seed(0)
    bb, head = ToyTransformer(), Head(torch.randn(2, 8))
    curv = estimate_curvature(bb, _tokens(), _cfg(dense_blocks=True))
    reg = get_regime("delta")(FunctionalModel(bb, trainable_names(bb, "all")), head, _tcfg(), curv)
    assert sorted(reg.uncovered) == ["embed.weight", "pos"]
    # train() drops the blocks for a config without dense_norm_blocks: the LayerNorms are then unpenalised (said)
    with pytest.warns(UserWarning, match="no curvature block") as rec:
        train(bb, head, _data(), _tcfg(trainable="all", steps=1), curvature=curv)
    assert any("ln1.weight" in str(w.message) for w in rec)
    deltamerge.model._REPORTED.clear()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        train(bb, head, _data(), _tcfg(trainable="all", steps=1, dense_norm_blocks=True), curvature=curv)
    msgs = [str(w.message) for w in rec if "no curvature block" in str(w.message)]
    assert msgs and all("ln1" not in m and "embed.weight" in m for m in msgs)


def test_dense_norm_blocks_is_delta_only_and_the_released_profile_leaves_it_off_elsewhere():
    assert train_config("delta-lora", profile="released").dense_norm_blocks is False
    with pytest.raises(Exception, match="dense_norm_blocks applies to regime 'delta' only"):
        train_config("delta-lora", dense_norm_blocks=True)
    with pytest.raises(Exception, match="dense_block_scale"):
        train_config("delta-lora", dense_block_scale=3.0)
    # new field at its default: the hash of existing DELTA configs is unchanged
    a = train_config("delta", steps=3)
    assert config_hash(a) == config_hash(train_config("delta", steps=3, dense_block_scale=10.0)) != \
        config_hash(train_config("delta", steps=3, dense_block_scale=5.0))


def test_data_parallel_share_deals_the_dense_blocks():
    from deltamerge.training.parallel import curvature_share

    torch.manual_seed(0)
    curv = estimate_curvature(ToyTransformer(), _tokens(), _cfg(dense_blocks=True))
    shares = [curvature_share(curv, r, 2) for r in range(2)]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(curv.parameter_names)


# ---- the pipeline: one curvature with dense blocks when a DELTA config asks; blocks added to a cached estimate ----
def _token_suite():
    from deltamerge.heads import few_shot_head
    from deltamerge.suites.synthetic import Synthetic

    def split(n, seed):
        return _data(n, seed)

    class TokenSynthetic(Synthetic):
        reference_description = "random token ids"

        def backbone(self):
            return ToyTransformer()

        def load_task(self, name, preset):
            seed = 10 + self.task_names.index(name)
            return Task(name, ["a", "b"], split(48, seed), split(24, seed + 50), split(24, seed + 90))

        def control(self, preset):
            return Task("control", ["a", "b"], split(48, 7), split(24, 8), split(24, 9))

        def reference(self, preset):
            return _tokens(n=32, seed=5)

        def head(self, backbone, task):
            return few_shot_head(backbone, task.train, task.num_classes, shots=8)

    return TokenSynthetic()


def test_cached_curvature_gets_its_dense_blocks_added(tmp_path):
    from deltamerge.stages import load_or_estimate_curvature

    suite = _token_suite()
    bb = suite.backbone()
    run = RunConfig(suite="synthetic", out=tmp_path)
    path = tmp_path / "curvature.safetensors"
    plain = load_or_estimate_curvature(suite, bb, run, path)
    assert plain.dense == []
    dense = load_or_estimate_curvature(suite, bb, run, path, dense_blocks=True)
    assert [b.name for b in dense.dense] == ["ln1", "ln2"] and "dense_seconds" in dense.meta
    for a, b in zip(plain.layers, dense.layers):
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    again = load_or_estimate_curvature(suite, bb, run, path, dense_blocks=True)  # reused as is
    assert "dense_seconds" in again.meta and torch.equal(again.dense[0].G, dense.dense[0].G)
    # a run without dense_norm_blocks reuses the file that has them (training leaves the blocks unused)
    stamp = path.stat().st_mtime_ns
    reused = load_or_estimate_curvature(suite, bb, run, path)
    assert path.stat().st_mtime_ns == stamp and len(reused.dense) == 2


def test_released_profile_end_to_end_on_a_token_suite(tmp_path):
    from deltamerge import pipeline
    from deltamerge.taskvector import TaskVector

    res = pipeline.run(RunConfig(suite="synthetic", out=tmp_path, regimes=["delta"],
                                 train={"delta": {"steps": 3, "profile": "released"}}), suite=_token_suite())
    assert res["regimes"]["delta"]["train"]["dense_norm_blocks"] is True
    curv = Curvature.load(tmp_path / "curvature.safetensors")
    assert [b.name for b in curv.dense] == ["ln1", "ln2"]
    tv = TaskVector.load(tmp_path / "vectors" / "delta" / "task0.safetensors")
    assert tv.deltas["ln1.weight"].abs().sum() > 0


# ---- wrapped models: the probe finds the LayerNorms the features depend on, and class tokens ---------------------
def test_wrapped_models_name_reached_layernorms_and_class_tokens():
    from torch import nn

    import deltamerge

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.cls_token = nn.Parameter(0.1 * torch.randn(4))
            self.used, self.unused = nn.LayerNorm(4), nn.LayerNorm(4)
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            self.unused(x)  # runs, but the output is discarded
            return self.lin(torch.tanh(self.used(x + self.cls_token)))

    wrapped = deltamerge.wrap(Model().double(), sample=torch.randn(2, 4, dtype=torch.float64))
    groups = wrapped.dense_block_groups()
    assert groups == {"model.used": ["model.used.weight", "model.used.bias"], "model.cls_token": ["model.cls_token"]}
    x = torch.randn(7, 4, dtype=torch.float64)
    for b in estimate_dense_blocks(wrapped, x, _cfg()):
        assert torch.allclose(b.G, _ggn(wrapped, b.params, x), atol=1e-12)

    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=16, attn_implementation="eager"))
    names = list(deltamerge.wrap(bert).dense_block_groups())
    assert names == ["model.embeddings.LayerNorm", "model.encoder.layer.0.attention.output.LayerNorm",
                     "model.encoder.layer.0.output.LayerNorm"]


def test_cli_curvature_dense_blocks_flag(tmp_path):
    from typer.testing import CliRunner

    from deltamerge.cli import app

    out = tmp_path / "c.safetensors"
    r = CliRunner().invoke(app, ["curvature", "synthetic", "--out", str(out), "--dense-blocks"])
    assert r.exit_code == 0 and "0 dense blocks" in r.output  # the synthetic MLP has no LayerNorm
    assert Curvature.load(out).meta["config"]["dense_blocks"] is True
