"""TAK, Porrello et al. (the DELTA paper's "2025b"; arXiv 2602.17385): linear (tangent-space) fine-tuning with a
dataless drift penalty built from the *other* tasks' KFAC curvature.

    minimise  CE(head(f0(x) + J(x)·τ))  +  λ · Σ_{t′≠t} Σ_l tr(ΔW_lᵀ G_l^{t′} ΔW_l A_l^{t′})

with the authors' weights (λ = ``tak_lambda`` = 100; the output projection's block ×``tak_projection_scale`` = 0.01,
applied as in ``penalty_scaling``), where A_l^{t′}, G_l^{t′} are the KFAC factors of G_{t′} = (1/N_{t′}) Σ_{x′}
J(x′)ᵀJ(x′), the feature GGN on task t′'s own training inputs (label-free), estimated once per task and shared as a
file instead of the data. The quadratic form τᵀ(A ⊗ G)τ approximates mean_{x′} ‖J(x′)·τ‖², i.e. τJp's penalty
without the other tasks' data.

We sum the exact per-task KFAC quadratic forms; the paper merges the other tasks' factors into one Kronecker
product (a heuristic it bounds) so the cost stays constant in the number of tasks — with ≤ 4 tasks the sum is cheap
and has no merging error. ``penalty_every`` applies it every k steps with weight k. The KFAC is that of the suite's
feature space (``feature_transform``; the authors: normalised features). Parameters the curvature does not cover
(e.g. depthwise convs) are trained unregularized.
"""

from __future__ import annotations

from torch import Tensor

from deltamerge.curvature import Curvature, sum_terms
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import Params
from deltamerge.training.linear import Linear
from deltamerge.training.penalty_scaling import projection_weights, weighted
from deltamerge.training.regime import register


def tak_penalty(curvatures: dict[str, Curvature], tau: Params) -> Tensor:
    """Σ_{t′} τᵀ (KFAC of task t′) τ, each over the layers its curvature covers."""
    return sum_terms((curv.penalty(tau) for curv in curvatures.values()), tau)


@register
class TAK(Linear):
    name = "tak"
    needs_others = "kfac"

    def setup(self) -> None:
        super().setup()
        device = next(iter(self.model.base.values())).device
        wrong = sorted(n for n, c in self.context.other_curvatures.items() if c.kind != "kfac")
        if wrong:
            raise DeltaMergeError(f"TAK needs KFAC curvature of the other tasks; {wrong} are not kind 'kfac'")
        self.curvatures = {n: c.to(device) for n, c in self.context.other_curvatures.items()}
        covered = set().union(*(c.parameter_names for c in self.curvatures.values()))
        self.layer_weights = projection_weights(self.model.backbone, self.model.names, self.cfg.tak_projection_scale)
        if not covered & set(self.model.names):
            raise DeltaMergeError("the other tasks' KFAC covers none of the trained parameters: TAK would not "
                                  "regularize anything")

    def penalty(self, tau: Params, step: int) -> Tensor | None:
        """Σ_{t′} τᵀ KFAC_{t′} τ (projection block ×``tak_projection_scale``), every ``penalty_every`` steps with
        weight ``penalty_every``."""
        return self.every_k(step, lambda: tak_penalty(self.curvatures, weighted(tau, self.layer_weights)))

    def penalty_weight(self) -> float:
        return self.cfg.tak_lambda
