"""The paper's diagnostics of task vectors, as plain functions of (backbone, task vectors, data, heads); the feature
passes are the run's :class:`~deltamerge.evaluation.evaluator.Evaluator`'s (batch size, device).

f(x; θ) are the backbone's last hidden features (the quantity DELTA distills). A ``linear`` (tangent-space) vector is
evaluated with the linearized model, f_lin(x; θ0 + Σ_i c_i τ_i) = f0 + Σ_i c_i J·τ_i (one jvp per vector serves every
coefficient); a ``nonlinear`` vector with the plain model f(x; θ0 + Σ_i c_i τ_i).

- Disentanglement error (Eq. 4, Ortiz-Jimenez et al.):
      ξ(α1, α2) = Σ_{t=1,2} E_{x~μ_t} 1{φ_t(f(x; θ0 + α_t τ_t)) ≠ φ_t(f(x; θ0 + α1 τ1 + α2 τ2))},
  μ_t = task t's test inputs, φ_t = task t's frozen head followed by argmax (the predicted class). Range [0, 2].
- Linearization error (Eq. 9): ξ_lin(x) = ‖(1/T) Σ_t f(x; θ0 + τ_t) − f(x; θ0 + (1/T) Σ_t τ_t)‖₁.
- Edit distance (Sec. 5, support localization): (1/d) ‖f(x; θ0 + τ_t) − f(x; θ0)‖², d = feature dimension.
- Merged accuracy along α (Fig. 3, 8, 12) and single-task accuracy (Fig. 9, 14).
"""

from __future__ import annotations

import torch
from torch import Tensor

from deltamerge.backbones.base import Backbone, Head
from deltamerge.data import ArrayDataset
from deltamerge.errors import DeltaMergeError
from deltamerge.evaluation.evaluator import DEFAULT, Evaluator, Reduce
from deltamerge.merging import MergeMethod, as_method
from deltamerge.taskvector import TaskVector


def predictor(head: Head) -> Reduce:
    """φ: features → predicted class (the head runs on CPU in float32)."""
    head = head.to("cpu").float()
    return lambda f: head(f.cpu()).argmax(-1)


def disentanglement_from_predictions(single: tuple[Tensor, Tensor], joint: tuple[Tensor, Tensor]) -> Tensor:
    """ξ on a G×G grid from predictions: ``single[t]`` [G, N_t] = φ_t at θ0 + α_g τ_t on μ_t, ``joint[t]``
    [G, G, N_t] = φ_t at θ0 + α_i τ1 + α_j τ2 on μ_t. Row i ↔ α1 = α_i, column j ↔ α2 = α_j."""
    s1, s2 = single
    j1, j2 = joint
    return (s1[:, None, :] != j1).float().mean(-1) + (s2[None, :, :] != j2).float().mean(-1)


def disentanglement_error(backbone: Backbone, vectors: tuple[TaskVector, TaskVector],
                          data: tuple[ArrayDataset, ArrayDataset], heads: tuple[Head, Head], alphas: list[float],
                          evaluator: Evaluator = DEFAULT) -> Tensor:
    """ξ(α1, α2) of Eq. 4 for one task pair over ``alphas`` × ``alphas`` → [G, G] (rows α1, columns α2)."""
    grid = [[a1, a2] for a1 in alphas for a2 in alphas]
    g = len(alphas)
    single, joint = [], []
    for t in (0, 1):
        alone = [[a, 0.0] if t == 0 else [0.0, a] for a in alphas]
        preds = evaluator.features_at(backbone, data[t], list(vectors), alone + grid, predictor(heads[t]))
        single.append(torch.stack(preds[:g]))
        joint.append(torch.stack(preds[g:]).view(g, g, -1))
    return disentanglement_from_predictions((single[0], single[1]), (joint[0], joint[1]))


def linearization_error(backbone: Backbone, vectors: list[TaskVector], data: ArrayDataset,
                        evaluator: Evaluator = DEFAULT) -> Tensor:
    """ξ_lin(x) of Eq. 9 for every example of ``data`` → [N]; θ_t = θ0 + τ_t, θ̄ = θ0 + (1/T) Σ_t τ_t."""
    t = len(vectors)
    if t < 2:
        raise DeltaMergeError("the linearization error needs at least two task vectors")
    rows = [[float(i == k) for i in range(t)] for k in range(t)] + [[1.0 / t] * t]
    feats = evaluator.features_at(backbone, data, vectors, rows)
    mean_of_outputs = torch.stack(feats[:t]).double().mean(0)
    return (mean_of_outputs - feats[t].double()).abs().sum(-1).float()


def edit_distance(backbone: Backbone, vector: TaskVector, data: ArrayDataset, evaluator: Evaluator = DEFAULT,
                  base: Tensor | None = None) -> Tensor:
    """(1/d) ‖f(x; θ0 + τ) − f(x; θ0)‖² for every example of ``data`` → [N]. ``base``: f(x; θ0) if already known
    (one pass over a dataset then serves every task vector)."""
    if base is None:
        edited, base = evaluator.features_at(backbone, data, [vector], [[1.0], [0.0]])
    else:
        edited = evaluator.features_at(backbone, data, [vector], [[1.0]])[0]
    return (edited.double() - base.double()).square().mean(-1).float()


def merged_accuracy(backbone: Backbone, vectors: dict[str, TaskVector], data: dict[str, ArrayDataset],
                    heads: dict[str, Head], alphas: list[float], method: str | MergeMethod = "task-arithmetic",
                    evaluator: Evaluator = DEFAULT) -> dict[str, list[float]]:
    """Accuracy of θ0 + α·merge({τ_t}) on each task's data, for every α → {task: [acc per α]}."""
    prepared = as_method(method).prepare([vectors[t] for t in data])
    if not prepared.homogeneous:  # pragma: no cover - every registered method is homogeneous today
        raise NotImplementedError(f"merge method '{method}' is not homogeneous in α; the sweep assumes it is")
    out = {}
    for t, d in data.items():
        acc = evaluator.accuracy_along(backbone, d, heads[t], prepared.direction, alphas)
        out[t] = [acc[a] for a in alphas]
    return out


def single_task_accuracy(backbone: Backbone, vectors: dict[str, TaskVector], data: dict[str, ArrayDataset],
                         heads: dict[str, Head], evaluator: Evaluator = DEFAULT) -> dict[str, float]:
    """Accuracy of θ0 + τ_t on task t's data, per task (the individually fine-tuned model)."""
    return {t: evaluator.accuracy(backbone, d, heads[t], vectors[t])
            for t, d in data.items()}
