"""Class names and prompt templates of CLIP's zero-shot heads, read from maintained libraries.

* ImageNet-1k (control task): OpenAI's curated 1000 class names and 80 templates as ``open_clip`` ships them
  (``open_clip/zero_shot_metadata.py``; CLIP_benchmark agrees). The curated list repeats two names ("missile" at
  657/744, "sunglasses" at 836/837): each keeps its own class index.
* The 14 vision tasks: FusionBench's ``fusion_bench/tasks/clip_classification/<task>.py``, the lists used with the
  ``tanganke/*`` hub data sets, which agree with the DELTA authors' code (FER-2013's alphabetical order, PCam's
  "lymph node" names, GTSRB's names as ``tanganke/gtsrb`` ships them, task_vectors' templates).

Both packages import their whole frameworks on ``import`` (open_clip needs a torchvision built for the installed torch,
FusionBench needs lightning/hydra), so the two plain data files are executed on their own from the installed package's
folder (:func:`_data_module`) instead of being imported as submodules; they define only lists of strings and lambdas.
Templates are stored as lambdas ``c -> str``; calling one with ``"{}"`` gives the format string used here.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from deltamerge.errors import DeltaMergeError

#: task -> (FusionBench file, variable holding the class names)
FUSIONBENCH_FILES: dict[str, tuple[str, str]] = {
    "cars": ("stanford_cars", "classnames"), "dtd": ("dtd", "classnames"), "eurosat": ("eurosat", "classnames"),
    "gtsrb": ("gtsrb", "classnames"), "mnist": ("mnist", "classnames"), "resisc45": ("resisc45", "classnames"),
    "sun397": ("sun397", "classnames"), "svhn": ("svhn", "classnames"), "cifar100": ("cifar100", "fine_label"),
    "stl10": ("stl10", "classnames"), "flowers102": ("flower102", "classnames"),
    "pets": ("oxford_iiit_pet", "classnames"), "pcam": ("pcam", "classnames"), "fer2013": ("fer2013", "classnames"),
}
_INSTALL = "pip install 'deltamerge[hub]'"


def _package_dir(package: str, pip_name: str) -> Path:
    """The installed package's folder, found without importing (executing) the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DeltaMergeError(f"the hub suites' class names and templates come from `{pip_name}`, which is not "
                              f"installed: {_INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def _data_module(package: str, pip_name: str, relative: str) -> ModuleType:
    """Execute one plain data file of an installed package as a stand-alone module."""
    path = _package_dir(package, pip_name) / relative
    if not path.is_file():
        raise DeltaMergeError(f"{pip_name} has no {relative} (installed at {path.parent}); {_INSTALL}")
    spec = importlib.util.spec_from_file_location(f"_deltamerge_meta_{package}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _as_formats(templates) -> list[str]:
    """Lambda templates (``c -> f"... {c} ..."``) or format strings -> format strings with one ``{}``."""
    return [t("{}") if callable(t) else str(t) for t in templates]


def imagenet_classnames() -> list[str]:
    """OpenAI's curated ImageNet-1k class names, index by index (open_clip)."""
    return list(_data_module("open_clip", "open-clip-torch", "zero_shot_metadata.py").IMAGENET_CLASSNAMES)


def imagenet_templates() -> list[str]:
    """OpenAI's 80 ImageNet prompt templates (open_clip)."""
    return _as_formats(_data_module("open_clip", "open-clip-torch", "zero_shot_metadata.py").OPENAI_IMAGENET_TEMPLATES)


def _fusionbench(task: str) -> ModuleType:
    if task not in FUSIONBENCH_FILES:
        raise DeltaMergeError(f"no zero-shot metadata for task '{task}' (known: {', '.join(FUSIONBENCH_FILES)}, "
                              "imagenet)")
    return _data_module("fusion_bench", "fusion-bench",
                        f"tasks/clip_classification/{FUSIONBENCH_FILES[task][0]}.py")


def task_classnames(task: str) -> list[str]:
    """Class names of one vision task in its label order (FusionBench; ImageNet: open_clip)."""
    if task == "imagenet":
        return imagenet_classnames()
    return [str(n) for n in getattr(_fusionbench(task), FUSIONBENCH_FILES[task][1])]


def task_templates(task: str) -> list[str]:
    """Prompt templates of one vision task (FusionBench; ImageNet: open_clip)."""
    if task == "imagenet":
        return imagenet_templates()
    return _as_formats(_fusionbench(task).templates)
