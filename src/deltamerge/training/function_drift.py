"""DELTA's drift measured in function space on the reference set, instead of through EK-FAC (issue 25, item 3).

With G = (1/N) Σ_n J_nᵀ J_n the feature GGN over the reference set, DELTA's L_drift(τ) = τᵀ G τ. Its EK-FAC form
keeps the block diagonal, Kronecker-factored and computed once from one probe draw. This option instead estimates it
on a fresh reference minibatch x_1..x_B at every step:

    teacher:  (1/B) Σ_b ‖J(x_b)·τ_T‖²                    (exact for the minibatch: one jvp, every layer and
                                                           cross-layer term, no factors, no probe)
    student:  (1/B) Σ_b ‖f(x_b; θ0 + τ_S) − f(x_b; θ0)‖²  (the drift the student's own function makes; equals
                                                           the teacher form to second order in τ)

Both are unbiased for their population means over the reference set. ``reference_augment`` adds task-agnostic
augmentation of the drawn crops (random grayscale, scale and per-channel colour gain).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deltamerge.data import Inputs, num_rows, take
from deltamerge.errors import DeltaMergeError
from deltamerge.linearize import FunctionalModel, Params


def _wide(t: Tensor) -> Tensor:
    """Half-precision features in fp32 for the sum of squares; fp32 / fp64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def teacher_drift(model: FunctionalModel, inputs: Inputs, tau: Params) -> Tensor:
    """(1/B) Σ_b ‖J(x_b)·τ‖², differentiable in τ."""
    _, j_tau = model.linearized(inputs, tau)
    return _wide(j_tau).square().sum(-1).mean()


def student_drift(model: FunctionalModel, inputs: Inputs, tau: Params, f0: Tensor | None = None) -> Tensor:
    """(1/B) Σ_b ‖f(x_b; θ0 + τ) − f(x_b; θ0)‖², differentiable in τ (``f0`` may be passed when known)."""
    if f0 is None:
        with torch.no_grad():
            f0 = model.features(inputs)
    return (_wide(model.features(inputs, tau)) - _wide(f0)).square().sum(-1).mean()


def augment(x: Tensor, generator: torch.Generator, p_gray: float = 0.3, min_scale: float = 0.6,
            gain: float = 0.2) -> Tensor:
    """Task-agnostic augmentation of images ``[B, C, H, W]`` with pixel values 0..255 (uint8 or float): per image a
    random crop of ``min_scale``–1 of each side resized back (bilinear, one batched ``grid_sample``), a per-channel
    colour gain in [1 − gain, 1 + gain], and grayscale (3 channels only) with probability ``p_gray``. Returns the
    input's shape and dtype."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise DeltaMergeError("reference_augment applies to image references ([B, C, H, W] tensors) only")
    b, c, h, w = x.shape
    u = torch.rand(b, 4 + c, generator=generator).to(x.device)
    scale = min_scale + (1 - min_scale) * u[:, 0]
    # crop of side `scale` (normalised coordinates: the image spans [-1, 1]) centred anywhere it fits
    cx, cy = (2 * u[:, 1] - 1) * (1 - scale), (2 * u[:, 2] - 1) * (1 - scale)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = scale, scale, cx, cy
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    img = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    img = img * (1 - gain + 2 * gain * u[:, 4:4 + c]).view(b, c, 1, 1)
    if c == 3:
        gray = (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]).unsqueeze(1).expand(b, 3, h, w)
        img = torch.where((u[:, 3] < p_gray).view(b, 1, 1, 1), gray, img)
    return img.round().clamp(0, 255).to(x.dtype)


class ReferenceStream:
    """A fresh minibatch of the reference inputs per step: a seeded reshuffle per pass, so a run is reproducible and
    every reference input is used once per pass."""

    def __init__(self, inputs: Inputs, batch_size: int, seed: int, augment_inputs: bool = False) -> None:
        self.inputs, self.n = inputs, num_rows(inputs)
        if self.n == 0:
            raise DeltaMergeError("the reference set is empty: drift 'function' needs reference inputs")
        self.batch_size = min(batch_size, self.n)
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        self.augment_inputs = augment_inputs

    def next(self) -> Inputs:
        if self.pos + self.batch_size > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        batch = take(self.inputs, idx)
        return augment(batch, self.generator) if self.augment_inputs else batch
