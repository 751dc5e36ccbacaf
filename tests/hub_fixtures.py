"""Tiny random CLIP / T5 models with word-level tokenizers, and small image / text tables, built in the tests.

Models are saved to a folder and loaded back by the same ``from_pretrained`` a user's hub id goes through (a local
folder needs no network). Tables are real ``datasets.Dataset`` objects with ``Image`` / ``ClassLabel`` features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = ("a photo of the an my this is centered satellite number traffic sign zoomed in close up texture pattern "
         "thing object imagery aerial view i love dirty clean new old type flower pet face looking emotion they "
         "look how are that looks showing mnli hypothesis premise rte sentence1 sentence2 qnli question sentence "
         "sst2 entailment neutral contradiction not_entailment negative positive cat dog sun rain yes no red green "
         "blue big small annual crop forest river sea lake highway stop speed limit road").split()
SPECIALS = ["[PAD]", "[EOS]", "[UNK]", "[BOS]"]


def word_tokenizer(folder: Path, extra: list[str] = ()):
    """A lower-casing word-level fast tokenizer that appends [EOS]; saved to ``folder``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(WORDS) | set(extra)))}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", vocab["[EOS]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]",
                                   bos_token="[BOS]")
    fast.save_pretrained(folder)
    return fast, vocab


def tiny_clip_dir(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPModel

    fast, vocab = word_tokenizer(folder)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=32, pad_token_id=vocab["[PAD]"],
                eos_token_id=vocab["[EOS]"], bos_token_id=vocab["[BOS]"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    return folder


def tiny_t5_dir(folder: Path, seed: int = 0) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    fast, vocab = word_tokenizer(folder)
    cfg = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   pad_token_id=vocab["[PAD]"], eos_token_id=vocab["[EOS]"], decoder_start_token_id=vocab["[PAD]"],
                   dropout_rate=0.0, feed_forward_proj="gated-gelu")  # smooth (T5 v1.1's MLP): exact FD checks
    torch.manual_seed(seed)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


def image_table(num_classes: int, n: int, seed: int, names: list[str] | None = None, size=(40, 48),
                image_col: str = "image", label_col: str = "label"):
    """Images whose mean colour depends on the class (learnable), with a ClassLabel (or int) label column."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1000 + num_classes).uniform(30, 225, size=(num_classes, 3))
    labels = rng.integers(0, num_classes, n)
    images = []
    for y in labels:
        px = np.clip(palette[y] + rng.normal(0, 25, size=(size[0], size[1], 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(px))
    label_feat = datasets.ClassLabel(names=names) if names else datasets.ClassLabel(num_classes=num_classes)
    feats = datasets.Features({image_col: datasets.Image(), label_col: label_feat})
    return datasets.Dataset.from_dict({image_col: images, label_col: labels.tolist()}, features=feats)


def nli_table(columns: tuple[str, ...], names: list[str] | None, n: int, seed: int, label_map: dict | None = None):
    """Sentence pairs whose label is readable from the words (learnable); ClassLabel or string labels."""
    import datasets

    rng = np.random.default_rng(seed)
    k = len(names) if names else len(label_map)
    cue = ["yes", "no", "rain", "sun"][:k]
    rows = {c: [] for c in columns}
    labels = rng.integers(0, k, n)
    for y in labels:
        noun = rng.choice(["cat", "dog", "forest", "river", "sea"])
        rows[columns[0]].append(f"the {noun} is big")
        if len(columns) > 1:
            rows[columns[1]].append(f"{cue[y]} the {noun} is small")
        else:
            rows[columns[0]][-1] += f" {cue[y]}"
    if names:
        feats = {c: datasets.Value("string") for c in columns}
        feats["label"] = datasets.ClassLabel(names=names)
        return datasets.Dataset.from_dict({**rows, "label": labels.tolist()}, features=datasets.Features(feats))
    inverse = {v: k_ for k_, v in label_map.items()}
    return datasets.Dataset.from_dict({**rows, "label": [inverse[int(y)] for y in labels]})


def text_stream_table(n: int, seed: int):
    import datasets

    rng = np.random.default_rng(seed)
    return datasets.Dataset.from_dict({"text": [" ".join(rng.choice(WORDS, 12)) for _ in range(n)]})


def write_hub_repo(root: Path, repo: str, splits: dict, config: str | None = None) -> Path:
    """A local copy of a hub data set repository in the layout the hub uses for parquet data sets:
    ``<root>/<repo>/data/<split>-00000-of-00001.parquet`` (features, e.g. ClassLabel / Image, in the parquet schema
    metadata), or, for a configuration, ``<root>/<repo>/<config>/<split>-...parquet`` declared in the README's YAML
    ``configs`` block (as ``nyu-mll/glue`` does). ``datasets.load_dataset(<root>/<repo>, config, split=...)`` then
    takes the path a hub download takes."""
    folder = root / repo
    sub = config or "data"
    (folder / sub).mkdir(parents=True, exist_ok=True)
    for split, table in splits.items():
        table.to_parquet(str(folder / sub / f"{split}-00000-of-00001.parquet"))
    if config is not None:
        readme = folder / "README.md"
        old = readme.read_text().split("---")[1].strip("\n") + "\n" if readme.exists() else "configs:\n"
        entry = f"- config_name: {config}\n  data_files:\n" + "".join(
            f"  - split: {s}\n    path: {config}/{s}-*.parquet\n" for s in splits)
        readme.write_text(f"---\n{old}{entry}---\n")
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread. On a shared 2-core machine two OpenMP threads made a 32×64 linear layer
    take ~30 ms instead of 0.35 ms (seen), i.e. the tests ran ~100× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
