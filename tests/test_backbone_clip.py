"""CLIP backbone: zero-shot heads equal CLIPModel's own logits, linearization vs finite differences, parameter
policy, OpenCLIP import, and the vision8 suite end to end on fixture tables (tiny random CLIP, no network)."""

from __future__ import annotations


import pytest
import torch
from torch import nn

pytest.importorskip("datasets")

from hub_fixtures import one_thread, tiny_clip_dir  # noqa: E402

from deltamerge.backbones.clip import CLIPVision  # noqa: E402
from deltamerge.errors import DeltaMergeError  # noqa: E402
from deltamerge.linearize import FunctionalModel  # noqa: E402
from deltamerge.training.regime import trainable_names  # noqa: E402


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def backbone(clip_dir):
    return CLIPVision.from_pretrained(clip_dir)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_zero_shot_head_equals_clip_logits(clip_dir, backbone):
    """One template per class: head(features) must equal CLIPModel's logits_per_image for the same prompts."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    classes = ["cat", "dog", "red sun"]
    head = backbone.zero_shot_head(classes, ["a photo of a {}."])
    x = images()
    pixels = (x.float() / 255 - backbone.pixel_mean) / backbone.pixel_std
    enc = tok([f"a photo of a {c}." for c in classes], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         pixel_values=pixels).logits_per_image
        got = head(backbone(x))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_zero_shot_head_averages_normalised_templates(backbone):
    """w_c = n(mean_t n(e(t(c)))): compare with the per-prompt embeddings computed one by one."""
    templates = ["a photo of a {}.", "a {} texture.", "this is {}"]
    head = backbone.zero_shot_head(["cat", "dog"], templates)
    for c, name in enumerate(["cat", "dog"]):
        emb = torch.cat([backbone.text.embed([t.format(name)]) for t in templates])
        w = torch.nn.functional.normalize(emb.mean(0), dim=0)
        torch.testing.assert_close(head.weight[c], w, atol=1e-5, rtol=1e-5)
    assert head.normalize and head.scale == pytest.approx(backbone.text.logit_scale)


def test_linearized_clip_matches_finite_differences(backbone):
    bb = backbone.double()
    try:
        names = trainable_names(bb, "default")
        model = FunctionalModel(bb, names)
        g = torch.Generator().manual_seed(1)
        tau = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.base.items()}
        x = images(3, seed=2)
        f0, jt = model.linearized(x, tau)
        torch.testing.assert_close(f0, bb(x))
        # HF's eager attention takes its softmax in float32 even for a float64 model, so the central difference has a
        # rounding floor near 1e-5; its O(ε²) error is ~7e-5 at ε = 1e-3 and ~1e-5 at ε = 3e-4 (seen).
        eps = 3e-4
        fd = (model.features(x, tau, eps) - model.features(x, tau, -eps)) / (2 * eps)
        assert ((jt - fd).norm() / jt.norm()).item() < 1e-4
        eps = 1e-2  # and the error grows as ε² (a wrong Jτ would leave an ε-independent gap)
        fd_coarse = (model.features(x, tau, eps) - model.features(x, tau, -eps)) / (2 * eps)
        assert ((jt - fd_coarse).norm() / jt.norm()).item() > 10 * ((jt - fd).norm() / jt.norm()).item()
    finally:
        backbone.float()


def test_parameter_policy(backbone):
    names = dict(backbone.named_parameters())
    trained = [n for n in names if backbone.default_trainable(n)]
    linear = {f"{m}.{leaf}" for m, mod in backbone.named_modules() if isinstance(mod, nn.Linear)
              for leaf in ("weight", "bias") if getattr(mod, leaf, None) is not None}
    assert set(trained) == linear  # every vision Linear (+ projection), nothing else
    assert "visual_projection.weight" in trained
    assert not any("embeddings" in n or "layer_norm" in n or "layrnorm" in n for n in trained)
    assert not any(n.startswith("text") for n in names)  # the text tower is not part of the backbone
    attn = [n for n in names if backbone.is_attention(n)]
    assert len(attn) == 2 * 4 * 2  # layers × (q, k, v, out) × (weight, bias)
    assert all(".self_attn." in n for n in attn)
    assert set(backbone.curvature_modules()) == {n.rsplit(".", 1)[0] for n in trained}


def test_fused_attention_is_switched_to_eager(clip_dir, backbone):
    from transformers import CLIPModel

    sdpa = CLIPVision(CLIPModel.from_pretrained(clip_dir, attn_implementation="sdpa"))
    assert sdpa.model.config._attn_implementation == "eager"  # the vision tower's own config (shared modules)
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x), backbone(x))


def test_a_wrap_configuration_named_as_saved_vectors_and_exportable(clip_dir, backbone, tmp_path):
    """wrap(CLIPVisionModelWithProjection, features="embeds", attach="", ...): names vision_model.* /
    visual_projection.* as before, and the export is a CLIPVisionModelWithProjection folder."""
    from transformers import CLIPVisionModelWithProjection

    from deltamerge import fingerprint
    from deltamerge.export import export_model
    from deltamerge.model import WrappedModel
    from deltamerge.taskvector import TaskVector

    assert isinstance(backbone, WrappedModel) and backbone.feature_rule == "embeds" and backbone.prefix == ""
    assert isinstance(backbone.model, CLIPVisionModelWithProjection)
    names = [n for n, _ in backbone.named_parameters()]
    assert names == [n for n, _ in backbone.model.named_parameters()] and names[0].startswith("vision_model.")
    g = torch.Generator().manual_seed(0)
    assert fingerprint(backbone) == fingerprint(backbone.model)
    tv = TaskVector({n: 0.01 * torch.randn(p.shape, generator=g) for n, p in backbone.named_parameters()
                     if backbone.default_trainable(n)}, fingerprint(backbone))
    out = export_model(backbone, tmp_path / "vision", tv, alpha=0.5)
    loaded = CLIPVisionModelWithProjection.from_pretrained(out, attn_implementation="eager").eval()
    x = images(2)
    with torch.no_grad():
        expected = FunctionalModel(backbone, list(tv.deltas)).features(x, tv.deltas, 0.5)
        got = backbone._call(loaded, x).image_embeds  # the backbone's preprocessing, on the loaded tower
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rejects_wrong_image_size(backbone):
    with pytest.raises(DeltaMergeError, match="32x32"):
        backbone(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def _to_openclip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Test-side inverse of the name mapping (HF -> OpenCLIP), written independently of the importer."""
    out = {}
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers.")})
    for i in layers:
        p = f"vision_model.encoder.layers.{i}."
        q = f"model.visual.transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[q + f"attn.in_proj_{leaf}"] = torch.cat([state[p + f"self_attn.{n}_proj.{leaf}"] for n in "qkv"])
            out[q + f"attn.out_proj.{leaf}"] = state[p + f"self_attn.out_proj.{leaf}"]
            out[q + f"ln_1.{leaf}"] = state[p + f"layer_norm1.{leaf}"]
            out[q + f"ln_2.{leaf}"] = state[p + f"layer_norm2.{leaf}"]
            out[q + f"mlp.c_fc.{leaf}"] = state[p + f"mlp.fc1.{leaf}"]
            out[q + f"mlp.c_proj.{leaf}"] = state[p + f"mlp.fc2.{leaf}"]
    e = "vision_model.embeddings."
    out.update({"model.visual.conv1.weight": state[e + "patch_embedding.weight"],
                "model.visual.class_embedding": state[e + "class_embedding"],
                "model.visual.positional_embedding": state[e + "position_embedding.weight"],
                "model.visual.proj": state["visual_projection.weight"].t()})
    for leaf in ("weight", "bias"):
        out[f"model.visual.ln_pre.{leaf}"] = state[f"vision_model.pre_layrnorm.{leaf}"]
        out[f"model.visual.ln_post.{leaf}"] = state[f"vision_model.post_layernorm.{leaf}"]
    return out


def test_openclip_in_proj_split_matches_multihead_attention(backbone):
    """OpenCLIP's nn.MultiheadAttention with in_proj rows [q; k; v] equals HF CLIPAttention after the split."""
    from deltamerge.backbones.openclip_import import openclip_to_hf

    mha = nn.MultiheadAttention(32, 2, batch_first=True)
    visual = {"transformer.resblocks.0.attn.in_proj_weight": mha.in_proj_weight.detach(),
              "transformer.resblocks.0.attn.in_proj_bias": mha.in_proj_bias.detach(),
              "transformer.resblocks.0.attn.out_proj.weight": mha.out_proj.weight.detach(),
              "transformer.resblocks.0.attn.out_proj.bias": mha.out_proj.bias.detach()}
    hf = openclip_to_hf(visual)
    attn = backbone.vision_model.encoder.layers[0].self_attn
    saved = {k: v.clone() for k, v in attn.state_dict().items()}
    try:
        attn.load_state_dict({k.split("self_attn.")[1]: v for k, v in hf.items()})
        x = torch.randn(2, 5, 32)
        with torch.no_grad():
            expected = mha(x, x, x, need_weights=False)[0]
            got = attn(x)[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    finally:
        attn.load_state_dict(saved)


def test_openclip_checkpoint_import_and_pickle_flag(clip_dir, tmp_path):
    from deltamerge.backbones.openclip_import import load_openclip_visual

    from transformers import CLIPConfig

    source = CLIPVision.from_config(CLIPConfig.from_pretrained(clip_dir), seed=7)
    state = _to_openclip({k: v.clone() for k, v in source.state_dict().items()})
    plain = tmp_path / "state.pt"
    torch.save(state, plain)
    target = CLIPVision.from_pretrained(clip_dir)
    x = images(2)
    assert not torch.allclose(target(x), source(x))
    load_openclip_visual(target, plain)
    torch.testing.assert_close(target(x), source(x))

    pickled = tmp_path / "module.pt"  # a pickled module, like the task_vectors ImageEncoder files
    torch.save(_PickledEncoder(state), pickled)
    with pytest.raises(DeltaMergeError, match="pickle"):
        load_openclip_visual(CLIPVision.from_pretrained(clip_dir), pickled)
    other = CLIPVision.from_pretrained(clip_dir)
    load_openclip_visual(other, pickled, allow_pickle=True)
    torch.testing.assert_close(other(x), source(x))


class _PickledEncoder(nn.Module):
    """Holds the tensors as buffers under their OpenCLIP names (dots replaced), restored by ``state_dict``."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._names = list(state)
        for i, v in enumerate(state.values()):
            self.register_buffer(f"t{i}", v.clone())

    def state_dict(self, *args, **kwargs):  # noqa: D102 - OpenCLIP-style keys
        return {n: getattr(self, f"t{i}") for i, n in enumerate(self._names)}


