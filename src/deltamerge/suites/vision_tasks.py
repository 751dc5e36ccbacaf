"""The 8/14-Vision tasks, the ImageNet-1k control task and the ImageNet-21k-P reference set, as hub data sets.

Hub ids follow FusionBench and the DELTA authors' code (see ../shared NOTES). Column names are the usual ones;
when a table names them differently the loader falls back to the first ``Image`` / ``ClassLabel`` column. Epochs are
the fine-tuning recipe of Ilharco et al. / Ortiz-Jimenez et al. for the 8 tasks (≈2000 steps at batch 128) and of
the 14-task follow-ups (Wang et al. 2024; Gargiulo et al. 2025) for the other six. Class counts are facts about the
data sets and are checked against the loaded labels. Class names and templates: ``zero_shot_metadata``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deltamerge.suites.hub_data import DatasetRef


@dataclass(frozen=True)
class VisionTaskSpec:
    name: str
    ref: DatasetRef
    num_classes: int
    epochs: int
    image_column: str | None = "image"
    label_column: str | None = "label"
    label_map: dict = field(default_factory=dict)  # raw label value -> id, for non-integer labels (PCam booleans)


VISION_TASKS: dict[str, VisionTaskSpec] = {s.name: s for s in [
    VisionTaskSpec("cars", DatasetRef("tanganke/stanford_cars"), 196, 35),
    VisionTaskSpec("dtd", DatasetRef("tanganke/dtd"), 47, 76),
    VisionTaskSpec("eurosat", DatasetRef("tanganke/eurosat"), 10, 12),
    VisionTaskSpec("gtsrb", DatasetRef("tanganke/gtsrb"), 43, 11),
    VisionTaskSpec("mnist", DatasetRef("ylecun/mnist"), 10, 5),
    VisionTaskSpec("resisc45", DatasetRef("tanganke/resisc45"), 45, 15),
    VisionTaskSpec("sun397", DatasetRef("tanganke/sun397"), 397, 14),
    VisionTaskSpec("svhn", DatasetRef("ufldl-stanford/svhn", "cropped_digits"), 10, 4),
    VisionTaskSpec("cifar100", DatasetRef("tanganke/cifar100"), 100, 6),
    VisionTaskSpec("stl10", DatasetRef("tanganke/stl10"), 10, 6),  # authors' DELTA configs: 6 epochs
    VisionTaskSpec("flowers102", DatasetRef("dpdl-benchmark/oxford_flowers102"), 102, 147),
    VisionTaskSpec("pets", DatasetRef("timm/oxford-iiit-pet"), 37, 82),
    VisionTaskSpec("pcam", DatasetRef("1aurent/PatchCamelyon"), 2, 1,  label_map={False: 0, True: 1, 0: 0, 1: 1}),
    VisionTaskSpec("fer2013", DatasetRef("clip-benchmark/wds_fer2013"), 7, 10, image_column="jpg",
                   label_column="cls"),
]}

VISION8 = ["cars", "dtd", "eurosat", "gtsrb", "mnist", "resisc45", "sun397", "svhn"]
VISION14 = VISION8 + ["cifar100", "stl10", "flowers102", "pets", "pcam", "fer2013"]

# Control task for negation: ImageNet-1k (gated on the hub: accept its terms and log in). Its test split has no
# labels, so the official validation split serves as "test". Streamed: only the validation split is read (a plain
# load_dataset would download every split, ~150 GB, to return one).
IMAGENET = VisionTaskSpec("imagenet", DatasetRef("ILSVRC/imagenet-1k", test="validation", streamed=True), 1000, 0)

# Reference set for the curvature: ImageNet-21k-P (winter 2021), training split, streamed.
IMAGENET21K_P = DatasetRef("timm/imagenet-w21-p", train="train", test="validation")
IMAGENET21K_P_TRAIN_SIZE = 11_060_223  # images in its training split; 15 % of them is the paper's reference set
