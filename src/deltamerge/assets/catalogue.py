"""The suite catalogue: one registration per built-in suite — where its class lives and which offline assets it
reads. ``suites/registry.py`` (``SUITES``, ``get_suite``) and ``assets/registry.py`` (``SUITE_ASSETS``,
``OPTIONAL_ASSETS``, ``fetch_suite``) are views of this one table.

It is plain data at the bottom layer (no suite code is imported), so that both the suites and the asset store can
read it: adding a suite is its module plus one ``register_suite`` line here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteEntry:
    """``target``: ``"module:Class"`` of the suite, imported on first use; ``assets``: what ``deltamerge demo`` and
    ``assets fetch --required-only`` install for it; ``optional_assets``: what only its non-default options and grown
    variants read (fetched by ``deltamerge assets fetch SUITE``)."""

    target: str
    assets: tuple[str, ...] = ()
    optional_assets: tuple[str, ...] = ()


SUITE_CATALOGUE: dict[str, SuiteEntry] = {}


def register_suite(name: str, target: str, assets: tuple[str, ...] = (),
                   optional_assets: tuple[str, ...] = ()) -> SuiteEntry:
    """Add suite ``name`` (its class at ``target`` and its assets) to the catalogue."""
    entry = SuiteEntry(target, tuple(assets), tuple(optional_assets))
    SUITE_CATALOGUE[name] = entry
    return entry


_VISION = ("efficientnet-lite0", "fashion-mnist", "mnist5k", "digits", "elpv", "lfw", "natural-images", "more-photos")

register_suite("synthetic", "deltamerge.suites.synthetic:Synthetic")
register_suite("vision-mini", "deltamerge.suites.vision_mini:VisionMini", _VISION,
               optional_assets=("broad-photos", "openclipart", "emoji"))
register_suite("vision-mini6", "deltamerge.suites.vision_colour:VisionMini6", (*_VISION, "openclipart", "emoji"),
               optional_assets=("broad-photos",))
register_suite("text-mini", "deltamerge.suites.text_mini:TextMini",
               ("minilm", "spam", "fine-foods", "fortunes", "austen", "text-reference"))
register_suite("vision8", "deltamerge.suites.vision_hub:Vision8")
register_suite("vision14", "deltamerge.suites.vision_hub:Vision14")
register_suite("nli6", "deltamerge.suites.nli_hub:NLI6")
register_suite("yaml", "deltamerge.suites.yaml_suite:YamlSuite")  # your own suite from a YAML file (option: file)
register_suite("llm-mini", "deltamerge.suites.llm_mini:LLMMini",
               ("smollm2", "fortunes", "text-reference", "fine-foods", "minilm"))  # last two: axes content
register_suite("llm-pref", "deltamerge.suites.llm_hub:LLMPref")
