"""CLIP byte-level BPE tokenizer without torch.

Implements the tokenizer the official SED code uses (open_clip ``SimpleTokenizer``:
ftfy + double html-unescape, whitespace collapse, lower case, BPE over UTF-8 bytes,
``<start_of_text>`` 49406 ... ``<end_of_text>`` 49407, zero padding to 77, truncation
that keeps EOT last). The merges file ``bpe_simple_vocab_16e6.txt.gz`` is read from the
engine directory or from the installed open_clip package (located without importing it).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
from collections import OrderedDict
from pathlib import Path

import numpy as np

from sed_trt.runtime.errors import ConfigError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
BPE_CACHE_WORDS = 50_000  # words whose BPE is kept (least recently used evicted)
HTML_SHRINK = 24  # an HTML5 entity shrinks at most 18-fold when unescaped (twice: a little more)
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_NUM_MERGES = 49152 - 256 - 2


def default_bpe_path() -> Path:
    """The merges file shipped with open_clip_torch (found without importing torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"cannot find {BPE_FILENAME}: install open_clip_torch or use an engine directory that contains it"
        )
    return Path(list(spec.submodule_search_locations)[0]) / BPE_FILENAME


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    # Printable bytes map to themselves; the rest to code points above 255, so no BPE symbol is whitespace.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


class ClipTokenizer:
    """Tokenizes prompts into (Q, 77) int64 arrays identical to open_clip's."""

    sot_token: int = 49406
    eot_token: int = 49407

    def __init__(self, bpe_path: str | Path | None = None, context_length: int = CONTEXT_LENGTH) -> None:
        import ftfy  # noqa: F401  (fail early with a clear message below if absent)
        import regex

        path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
        if not path.is_file():
            raise ConfigError(f"BPE merges file not found: {path}")
        with gzip.open(path, "rt", encoding="utf-8") as f:  # the file was left open before
            lines = f.read().split("\n")[1 : _NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        byte_symbols = list(_byte_to_unicode().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.context_length = context_length
        # A token covers at most this many bytes: a text with more non-space bytes than
        # (context - 2) tokens of this size cannot fit, whatever its words (checked before BPE).
        self.max_token_bytes = max(len(tok.removesuffix("</w>")) for tok in vocab[:-2])
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    @staticmethod
    def clean(text: str) -> str:
        """ftfy fix, html-unescape twice, collapse whitespace, lower-case."""
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def fits(self, text: str) -> bool | None:
        """False when ``text`` cannot fit the context whatever its words (a cheap byte count:
        milliseconds for megabytes); None when only tokenizing can tell."""
        budget = (self.context_length - 2) * self.max_token_bytes
        raw = sum(len(w.encode("utf-8")) for w in text.split())
        # html-unescaping shrinks entities, so the raw text gets that much slack before cleaning
        if raw > HTML_SHRINK * budget:
            return False
        if raw > budget and sum(len(w.encode("utf-8")) for w in self.clean(text).split()) > budget:
            return False
        return None

    def _bpe(self, token: str) -> str:
        if token in SPECIAL_TOKENS:  # open_clip maps them to their ids (class names may not hold them)
            return token
        if token in self._cache:
            self._cache.move_to_end(token)
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self._cache[token] = out
        if len(self._cache) > BPE_CACHE_WORDS:  # bounded: a server sees unbounded distinct words
            self._cache.popitem(last=False)
        return out

    def encode(self, text: str) -> list[int]:
        """BPE ids of one cleaned string, without SOT/EOT."""
        byte_map = _byte_to_unicode()
        ids: list[int] = []
        for token in self._pattern.findall(self.clean(text)):
            symbols = "".join(byte_map[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(symbols).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Tokenize prompts into an int64 array (Q, context_length), zero padded (open_clip truncates)."""
        return self.tokenize(texts)[0]

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Tokens (Q, context_length) and the rows that were cut to fit the context."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        truncated: list[int] = []
        for row, text in enumerate(texts):
            if self.fits(text) is False:
                truncated.append(row)
                out[row, 0], out[row, -1] = self.sot_token, self.eot_token
                continue
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > self.context_length:
                truncated.append(row)
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token
            out[row, : len(ids)] = ids
        return out, truncated


def trim_tokens(tokens: np.ndarray) -> np.ndarray:
    """Drop the padding columns after the last EOT of the batch.

    The text transformer is causal and pools at EOT, so columns after every EOT cannot
    change the result; trimming 77 to ~15 columns makes text encoding ~5x cheaper.
    """
    eot_pos = tokens.argmax(axis=1)  # EOT has the largest id
    length = max(int(eot_pos.max()) + 1, 2)
    return np.ascontiguousarray(tokens[:, :length])
