"""A small but genuine CLIP byte-level BPE tokenizer, built from files without a download.

Presets need a tokenizer that behaves like SD 1.5's (same normaliser, pre-tokeniser,
`</w>` suffix, special tokens, 77-token padding) but is a few kB instead of 49,408 entries.
The merges are grown so that every word we prompt with is one token, and anything else
still tokenizes (down to bytes), exactly as CLIP would treat a rare word.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import regex

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
# CLIP's pre-tokeniser: letter runs, single digits, other runs. A digit is always its own
# token, so a camera code such as "w5eq" is three tokens (w, 5, eq) here as in SD 1.5.
_PIECES = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")

CAMERA_CODES = ("w5eq", "2agp", "8mip", "hxy6", "itaw", "dx1v", "hfoc")  # DiVE's released camera codes
DEFAULT_WORDS: tuple[str, ...] = (
    *"a an the of in on at with and photo picture image person people man woman boy girl".split(),
    *"rgb infrared ir visible thermal camera view seen from front back side left right".split(),
    *"wearing shirt top jacket coat sweater hoodie dress skirt pants trousers jeans shorts".split(),
    *"shoes boots sneakers hat cap bag backpack glasses long short sleeve sleeves hair".split(),
    *"black white gray grey red green blue yellow orange purple pink brown dark light".split(),
    *"walking standing running street outdoor indoor night day young old carrying holding".split(),
    *"full body pedestrian surveillance low resolution blurry sharp high quality".split(),
    *CAMERA_CODES,
)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _word_symbols(piece: str, byte_symbols: list[str]) -> list[str]:
    symbols = [byte_symbols[b] for b in piece.encode("utf-8")]
    symbols[-1] += "</w>"
    return symbols


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply merges lowest rank first, all occurrences at once, as CLIP does."""
    while len(symbols) > 1:
        pairs = set(itertools.pairwise(symbols))
        best = min(pairs, key=lambda p: ranks.get(p, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges under which each pre-tokenised piece of `words` is a single token.

    A word still in several tokens gets one more merge of its first two tokens, appended at
    the lowest priority: that cannot change how earlier words are merged (at every step of
    theirs some higher-priority merge applied), so the list only grows and is deterministic.
    """
    byte_symbols = _byte_symbols()
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        for piece in _PIECES.findall(word.lower()):
            while len(tokens := _bpe(_word_symbols(piece, byte_symbols), ranks)) > 1:
                ranks[(tokens[0], tokens[1])] = len(merges)
                merges.append((tokens[0], tokens[1]))
    return merges


def build_clip_tokenizer(out_dir: Path, words: Iterable[str] = DEFAULT_WORDS) -> CLIPTokenizer:
    """Write vocab.json + merges.txt in CLIP's format into `out_dir` and load them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    byte_symbols = _byte_symbols()
    merges = build_merges(words)
    tokens = [*byte_symbols, *(s + "</w>" for s in byte_symbols), *dict.fromkeys(a + b for a, b in merges), BOS, EOS]
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    # model_max_length must be given: files alone leave it unbounded and max_length padding overflows.
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=MAX_LENGTH)
