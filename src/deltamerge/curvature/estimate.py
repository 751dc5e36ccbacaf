"""Estimate EK-FAC / KFAC factors of the feature GGN on a reference set with curvlinops-for-pytorch.

curvlinops (MIT, maintained) computes the Kronecker factors and the eigenvalue correction with hooks on ``nn.Linear``
and ``nn.Conv2d`` modules; we call it with an MSE loss on the features (whose Hessian is the identity up to a factor 2,
so the GGN is label-free) and rescale to G = (1/N) Σ_n J_nᵀJ_n. Two things are done here rather than in the library:
the eigendecompositions run in float64 with a small jitter (float32 ``eigh`` fails to converge on the rank-deficient
factors small reference sets produce), and factors are re-keyed from parameter positions to parameter names.
Both touch curvlinops' private state (``_input_covariances``, ``_mapping``, ...), hence the 3.0.x pin in
pyproject.toml; the brute-force GGN tests in tests/test_curvature.py catch any change of meaning.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from deltamerge.artifacts import fingerprint
from deltamerge.distributed import is_main, show_progress
from deltamerge.backbones.base import Backbone
from deltamerge.config import CurvatureConfig
from deltamerge.curvature.factors import Curvature, LayerCurvature, curvature_class
from deltamerge.curvature.reference import subsample
from deltamerge.curvature.sharded import all_reduce_corrections, all_reduce_factors, broadcast_eigenbases, \
    shard_reference
from deltamerge.curvature.token_layers import MaskHolder, is_attention_key, masked_operator
from deltamerge.data import Inputs, num_rows, take, to_device
from deltamerge.errors import DeltaMergeError
from deltamerge.feature_space import output_transform_hook
from deltamerge.lazy import is_token_inputs


#: torch ≥ 2.10 warns that ``torch.jit.script`` is deprecated (a DeprecationWarning or FutureWarning, by version)
#: when curvlinops imports linear_operator, which scripts a few functions at import time: not the user's concern
_JIT_SCRIPT_WARNING = r"`torch\.jit\.script` is deprecated"


def _curvlinops(name: str) -> type:
    """curvlinops' operator class ``name`` (the curvature class's ``operator``), imported with (only) torch's
    ``torch.jit.script`` deprecation warning silenced, where it comes from."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_SCRIPT_WARNING)
        import curvlinops
    return getattr(curvlinops, name)


def _eigvecs(factor: Tensor, jitter: float) -> Tensor:
    """Eigenvectors of a PSD factor, computed in float64 with relative diagonal jitter, in the factor's dtype."""
    f64 = factor.detach().double()
    scale = f64.diagonal().abs().mean().clamp_min(1e-30)
    f64 = f64 + jitter * scale * torch.eye(f64.shape[0], dtype=f64.dtype, device=f64.device)
    return torch.linalg.eigh(f64).eigenvectors.to(factor.dtype)


class _Batches:
    """Re-iterable (x, zero targets) batches over the reference set, built lazily: curvlinops reads the data twice
    (factors, then eigenvalue correction) and a hub reference set does not fit in memory."""

    def __init__(self, reference: Inputs, batch_size: int, device: torch.device, feature_dim: int,
                 masks: MaskHolder | None = None) -> None:
        self.reference, self.batch_size, self.device, self.feature_dim = reference, batch_size, device, feature_dim
        self.masks = masks  # receives each batch's attention_mask before curvlinops runs the forward

    def __len__(self) -> int:
        return -(-num_rows(self.reference) // self.batch_size)

    def __iter__(self):
        n = num_rows(self.reference)
        for start in range(0, n, self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, n))
            x = to_device(take(self.reference, idx), self.device)
            if self.masks is not None and isinstance(x, dict):
                self.masks.mask = x.get("attention_mask")
            yield x, torch.zeros(len(idx), self.feature_dim, device=self.device)  # MSE targets: unused by the GGN


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")
_EXTRA_DICTS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _hook_keys(model: nn.Module) -> dict[int, set[int]]:
    """The forward (pre-)hook ids each submodule holds now."""
    return {id(m): {k for d in _HOOK_DICTS for k in getattr(m, d, {})} for m in model.modules()}


def _remove_new_hooks(model: nn.Module, before: dict[int, set[int]]) -> None:
    """Remove the forward (pre-)hooks registered since ``before`` (torch keys every hook dict by the handle id, as
    ``RemovableHandle.remove`` does)."""
    for m in model.modules():
        old = before.get(id(m), set())
        for d in _HOOK_DICTS + _EXTRA_DICTS:
            hooks = getattr(m, d, None)
            for k in [k for k in (hooks or {}) if k not in old]:
                hooks.pop(k, None)


def _resolve_modules(backbone: Backbone, modules: list[str] | None) -> list[str]:
    names = backbone.curvature_modules() if modules is None else modules
    for name in names:
        mod = backbone.get_submodule(name)
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            raise DeltaMergeError(f"curvature covers nn.Linear / nn.Conv2d only; '{name}' is {type(mod).__name__}")
    if not names:
        raise DeltaMergeError(f"{backbone.name}: no layer to estimate curvature for")
    return list(names)


def estimate_curvature(backbone: Backbone, reference: Inputs, cfg: CurvatureConfig,
                       modules: list[str] | None = None) -> Curvature:
    """EK-FAC (``cfg.kind='ekfac'``) or KFAC of (1/N) Σ_n J_nᵀJ_n over the reference inputs (any source
    ``data_sources.as_inputs`` accepts), for ``modules``
    (default: the backbone's ``curvature_modules()``); exact (type-2, one backward per feature) or MC probes.
    ``cfg.dense_blocks``: also a dense GGN block per LayerNorm / class embedding (curvature/dense_blocks.py)."""
    kind_cls = curvature_class(cfg.kind)
    operator = _curvlinops(kind_cls.operator)
    from deltamerge.data_sources import as_inputs
    from deltamerge.model import as_backbone

    reference = as_inputs(reference)
    backbone = as_backbone(backbone, sample=lambda: take(reference, torch.arange(min(num_rows(reference), 2))))
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = backbone.to(device).eval()
    if cfg.dense_blocks:  # the Kronecker-factored layers, then the dense LayerNorm / class-embedding blocks
        from deltamerge.curvature.dense_blocks import with_dense_blocks

        curv = estimate_curvature(backbone, reference, cfg.model_copy(update={"dense_blocks": False}), modules)
        return with_dense_blocks(curv, backbone, reference, cfg)
    modules = _used_modules(backbone, reference, _resolve_modules(backbone, modules), device)
    split = _split_attention_keys(reference, cfg, modules)
    if split is not None:  # keys with KFAC-expand, the rest with reduce: two estimates, one curvature
        return _joined([estimate_curvature(backbone, reference, sub, mods) for sub, mods in split], cfg, backbone)
    reference, n = subsample(reference, cfg)
    params: list[nn.Parameter] = []
    for name in modules:
        mod = backbone.get_submodule(name)
        params.append(mod.weight)
        if mod.bias is not None and cfg.include_bias:
            params.append(mod.bias)
    old_flags = {id(p): p.requires_grad for p in backbone.parameters()}
    for p in backbone.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    is_dict = is_token_inputs(reference)
    approx = cfg.kfac_approx if cfg.kfac_approx != "auto" else ("reduce" if is_dict else "expand")
    masks = MaskHolder() if is_dict and cfg.mask_padding else None
    data = _Batches(shard_reference(reference), cfg.batch_size, device, backbone.feature_dim, masks)  # N stays global
    before = _hook_keys(backbone)  # curvlinops removes its hooks only when a pass completes
    op_cls = masked_operator(operator) if masks is not None else operator
    op = op_cls(backbone, nn.MSELoss(reduction="sum"), params, data, progressbar=show_progress(cfg.progress),
                check_deterministic=False, seed=probe_seed(cfg.seed),
                fisher_type="type-2" if cfg.probes == "exact" else "mc",
                mc_samples=1 if cfg.probes == "exact" else cfg.mc_samples, kfac_approx=approx,
                num_data=n, batch_size_fn=(lambda x: num_rows(x)) if is_dict else None,
                separate_weight_and_bias=not cfg.joint_bias,
                num_per_example_loss_terms=1)  # features [B, D]: one term per example; skips a data pass
    if masks is not None:
        op.mask_holder = masks
    hook = output_transform_hook(backbone, cfg.feature_transform)  # the GGN of g = T∘f (feature_space.py)
    try:
        op.compute_kronecker_factors()
        all_reduce_factors(op)  # data-parallel ranks: Σ of the per-shard factors (curvature/sharded.py)
        if kind_cls.eigen_corrected:
            # Eigenbases in float64 (see module docstring); curvlinops then skips its own float32 eigh.
            for src, dst in ((op._input_covariances, op._input_covariances_eigenvectors),
                             (op._gradient_covariances, op._gradient_covariances_eigenvectors)):
                for mod_name in list(src.keys()):
                    dst[mod_name] = _eigvecs(src.pop(mod_name), cfg.jitter)
            broadcast_eigenbases(op)
            op.compute_eigenvalue_correction()
            all_reduce_corrections(op)
    except BaseException:  # a failed estimate leaves the model usable: curvlinops' forward hooks go with it
        _remove_new_hooks(backbone, before)
        raise
    finally:
        if hook is not None:
            hook.remove()
        for p in backbone.parameters():
            p.requires_grad_(old_flags[id(p)])
    layers = _collect(op, backbone, params, kind_cls, scale=1.0 / (2.0 * n))
    meta = {"backbone": backbone.name, "num_data": n, "kfac_approx": approx, "config": cfg.model_dump()}
    return Curvature.create(cfg.kind, layers, fingerprint(backbone), meta)


#: curvlinops' own default seed of its MC-probe generator: ``seed: 0`` keeps the probes every run before the seed
#: was passed through drew (so those curvatures re-estimate bit-identically); seed k draws another set of probes
CURVLINOPS_DEFAULT_SEED = 2147483647


def probe_seed(seed: int) -> int:
    """The generator seed of the MC probes for ``CurvatureConfig.seed`` (which also seeds the ``num_examples``
    subsample)."""
    return CURVLINOPS_DEFAULT_SEED + seed


def _used_modules(backbone: Backbone, reference: Inputs, modules: list[str], device: torch.device) -> list[str]:
    """``modules`` less those whose output never reaches the features (e.g. HF ViT's pooler when the features are
    the CLS hidden state, chosen by a ``curvature`` pattern): curvlinops would fail on them ("differentiated Tensor
    ... not used in the graph"), and their GGN block is 0. Found with one forward on two reference examples and
    autograd's graph; the layers left out are named in a warning."""
    outputs: dict[str, list[Tensor]] = {m: [] for m in modules}
    handles = [backbone.get_submodule(m).register_forward_hook(
        lambda _mod, _inp, out, name=m: outputs[name].append(out)) for m in modules]
    flags = {id(p): p.requires_grad for p in backbone.parameters()}
    try:
        for m in modules:
            backbone.get_submodule(m).weight.requires_grad_(True)
        sample = to_device(take(reference, torch.arange(min(num_rows(reference), 2))), device)
        with torch.enable_grad():
            feats = backbone(sample)
            flat = [(m, o) for m in modules for o in outputs[m] if isinstance(o, Tensor) and o.requires_grad]
            grads = torch.autograd.grad(feats.sum(), [o for _, o in flat], allow_unused=True) if flat else []
    finally:
        for h in handles:
            h.remove()
        for p in backbone.parameters():
            p.requires_grad_(flags[id(p)])
    reached = {m for (m, _), g in zip(flat, grads) if g is not None}
    unused = [m for m in modules if m not in reached]
    if unused:
        if len(unused) == len(modules):
            raise DeltaMergeError(f"{backbone.name}: none of the curvature layers reaches the features "
                                  f"({unused[:4]}): check the features rule and the curvature layers")
        if is_main():
            warnings.warn(f"curvature: {len(unused)} layer(s) of {backbone.name} do not reach the features and get "
                          f"no curvature block: {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''} "
                          "(leave them out of the curvature layers to silence this)", UserWarning, stacklevel=3)
    return [m for m in modules if m in reached]


def _split_attention_keys(reference: Inputs, cfg: CurvatureConfig, modules: list[str]):
    """[(config, modules)] for keys (expand) and the rest (reduce) when the estimate would put keys under "reduce"
    (token inputs by default, or any inputs with an explicit ``kfac_approx: reduce``, e.g. a ViT's patch tokens);
    None when one estimate serves every layer."""
    if cfg.attention_keys != "expand":
        return None
    if (cfg.kfac_approx if cfg.kfac_approx != "auto" else
            ("reduce" if is_token_inputs(reference) else "expand")) != "reduce":
        return None
    keys = [m for m in modules if is_attention_key(m)]
    rest = [m for m in modules if not is_attention_key(m)]
    if not keys:
        return None
    parts = [(cfg.model_copy(update={"kfac_approx": "expand", "attention_keys": "same"}), keys)]
    if rest:
        parts.insert(0, (cfg.model_copy(update={"kfac_approx": "reduce", "attention_keys": "same"}), rest))
    return parts


def _joined(parts: list[Curvature], cfg: CurvatureConfig, backbone: Backbone) -> Curvature:
    """One curvature from per-module-group estimates (block-diagonal: the layers are simply collected)."""
    layers = [layer for part in parts for layer in part.layers]
    meta = {**parts[0].meta, "kfac_approx": "reduce+expand(attention keys)", "config": cfg.model_dump(),
            "attention_key_layers": [layer.module for part in parts[1:] for layer in part.layers]}
    return Curvature.create(cfg.kind, layers, parts[0].base_fingerprint, meta)


def _collect(op, backbone: Backbone, params: list[nn.Parameter], kind_cls: type[Curvature],
             scale: float) -> list[LayerCurvature]:
    """Re-key curvlinops' per-position factors by parameter name and apply the 1/(2N) normalisation (factors keep
    the model's dtype: float32 models give float32 factors; which factors: ``kind_cls.factors_from``)."""
    names = {id(p): n for n, p in backbone.named_parameters()}
    layers = []
    for mod_name, pos in op._mapping.items():
        weight = names[id(params[pos["weight"]])]
        bias = names[id(params[pos["bias"]])] if "bias" in pos else None
        joint = bias is not None and not op._separate_weight_and_bias
        tensors = kind_cls.factors_from(op, mod_name, pos, joint, scale)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        layers.append(LayerCurvature(mod_name, weight, bias, tensors, joint))
    return layers


def exact_drift(backbone: Backbone, names: Iterable[str], reference: Inputs, delta: dict[str, Tensor],
                batch_size: int = 256, transform: str = "identity") -> Tensor:
    """Oracle: mean_n ‖J_n τ‖² (J of g = T∘f) by forward-mode AD (exact, no Kronecker approximation, cross-layer
    terms included)."""
    from deltamerge.linearize import FunctionalModel

    model = FunctionalModel(backbone, list(names), transform=transform)
    total, n = 0.0, num_rows(reference)
    for start in tqdm(range(0, n, batch_size), desc="exact drift", disable=True):
        x = take(reference, torch.arange(start, min(start + batch_size, n)))
        _, jt = model.linearized(x, delta)
        total = total + jt.square().sum()
    return total / n
