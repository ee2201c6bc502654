"""Class vocabularies, prompt templates and synonym pooling (pure Python + numpy).

Conventions follow the official SED code: 80 ImageNet templates in OpenAI-notebook order
(the order is part of checkpoint compatibility: template p is input channel p of the
cost-map embedding), class strings containing ``", "`` are synonym lists, prompts are
built template-major, and each class keeps one embedding per template (T, P, E).
"""

from __future__ import annotations

import json
import re
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np

from sed_trt.runtime.errors import VocabularyError
from sed_trt.runtime.fsutil import require_regular_file
from sed_trt.runtime.jsonutil import loads_bounded

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# Built-in benchmark vocabularies: the official class files, byte for byte.
BUILTIN_VOCABULARIES: dict[str, str] = {
    "ade150": "ade150.json",
    "ade847": "ade847.json",
    "pc59": "pc59.json",
    "pc459": "pc459.json",
    "voc20": "voc20.json",
    "coco171": "coco.json",
}

SYNONYM_SEPARATOR = ", "
# Longer names cannot fit CLIP's context whatever their words (75 tokens of at most 32 bytes,
# with slack for HTML entities, which unescape shorter); refused before any text processing.
MAX_NAME_BYTES = 64 * 1024
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_WORD = re.compile(r"\w")  # a letter or a digit (or _)


def _meaningful(key: str) -> bool:
    """A letter, a digit or a symbol (emoji included: CLIP's byte-level BPE encodes them), not
    punctuation and spaces alone."""
    return bool(_WORD.search(key)) or any(unicodedata.category(c).startswith("S") for c in key)


def list_vocabularies() -> list[str]:
    """Names accepted by :func:`load_vocabulary` besides files and inline lists."""
    return sorted(BUILTIN_VOCABULARIES)


def builtin_vocabulary_text(name: str) -> str:
    """The raw JSON text of a built-in vocabulary (the official file, unchanged)."""
    if name not in BUILTIN_VOCABULARIES:
        raise VocabularyError(f"unknown vocabulary {name!r}; available: {list_vocabularies()}")
    ref = resources.files("sed_trt.runtime") / "vocabularies" / BUILTIN_VOCABULARIES[name]
    return ref.read_text(encoding="utf-8")


def load_vocabulary(spec: str) -> list[str]:
    """Resolve a vocabulary given as a built-in name, a file, or an inline list.

    Args:
        spec: ``ade150`` (etc.), a ``.json`` file holding a list of strings, a text file
            with one class per line, or an inline list ``"cat,dog,sky"``. Inline lists use
            ``;`` between classes when a class has synonyms: ``"building, edifice; sky"``.

    Returns:
        The validated class names, in order.
    """
    if spec in BUILTIN_VOCABULARIES:
        return validate_vocabulary(json.loads(builtin_vocabulary_text(spec)))
    path = Path(spec)
    if path.suffix.lower() in {".json", ".txt"} or names_file(spec) or _names_other_file(spec):
        return validate_vocabulary(_read_vocabulary_file(path))
    sep = ";" if ";" in spec else ","
    return validate_vocabulary([c.strip() for c in spec.split(sep)])


def names_file(spec: str) -> bool:
    """Whether ``spec`` names an existing file (an inline list may be too long for a path)."""
    try:
        return Path(spec).is_file()
    except (OSError, ValueError):
        return False


def _names_other_file(spec: str) -> bool:
    """Whether ``spec`` names something on disk that is not a regular file (a FIFO, a directory)."""
    try:
        return Path(spec).exists() and not Path(spec).is_file()
    except (OSError, ValueError):
        return False


def _read_vocabulary_file(path: Path) -> list[str]:
    require_regular_file(path, "vocabulary file", VocabularyError)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VocabularyError(f"cannot read vocabulary file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise VocabularyError(
            f"vocabulary file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the first class
    if path.suffix.lower() == ".json":
        data = loads_bounded(text, what=f"vocabulary file {str(path)!r}", error=VocabularyError)
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise VocabularyError(f"vocabulary file {str(path)!r} must hold a JSON list of strings")
        return data
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def class_key(name: str) -> str:
    """What makes two class names the same: the text CLIP's tokenizer reads (ftfy-fixed, HTML
    entities unescaped, whitespace collapsed, so ``ｃａｔ``, ``cat`` and ``c\x07at`` are one),
    case folded."""
    from sed_trt.runtime.tokenizer import ClipTokenizer

    if name.isascii() and name.isprintable() and "&" not in name:
        # what ftfy and html-unescaping leave unchanged (they change only non-ASCII text, control
        # characters and entities): the same key without their cost (millions of names in seconds)
        return " ".join(name.split()).lower()
    return ClipTokenizer.clean(name).casefold()


def name_problem(name: str, key: str | None = None) -> str | None:
    """Why a class name cannot be used (None: it can). Cheap: a byte count before any parsing;
    ``key``: its :func:`class_key` when already computed."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is {len(name.encode('utf-8', 'surrogatepass'))} bytes long; a class name of over {MAX_NAME_BYTES} cannot fit CLIP's 77 tokens"
    key = class_key(name) if key is None else key
    if any(tok in key for tok in SPECIAL_TOKENS):
        return "holds CLIP's special token <start_of_text> or <end_of_text>"
    if SYNONYM_SEPARATOR not in name:
        return None if _meaningful(key) else "has no letter, digit or symbol"
    if not all(_meaningful(class_key(synonym)) for synonym in name.split(SYNONYM_SEPARATOR)):
        return "has a synonym with no letter, digit or symbol"
    return None


def validate_vocabulary(classes: list[str]) -> list[str]:
    """Reject empty vocabularies, unusable names (:func:`name_problem`) and duplicates (after :func:`class_key`)."""
    if not classes:
        raise VocabularyError("the vocabulary is empty; give at least one class name")
    if not all(isinstance(c, str) for c in classes):
        raise VocabularyError("class names must be strings")
    empty = [i for i, c in enumerate(classes) if not c.strip()]
    if empty:
        raise VocabularyError(f"the vocabulary has empty class names at positions {empty[:10]}")
    keys: list[str] = []
    for i, c in enumerate(classes):
        too_long = len(c) > MAX_NAME_BYTES  # (name_problem counts its bytes before any cleaning)
        keys.append("" if too_long else class_key(c))
        problem = name_problem(c, None if too_long else keys[-1])
        if problem:
            raise VocabularyError(f"class {i} ({_shown(c)}) {problem}")
    seen: dict[str, str] = {}
    dups: list[str] = []
    for c, key in zip(classes, keys, strict=True):
        if key in seen:
            dups.append(f"{_shown(seen[key])} = {_shown(c)}" if seen[key] != c else _shown(c))
        seen.setdefault(key, c)
    if dups:
        raise VocabularyError(
            f"duplicate class names in the vocabulary (CLIP reads them alike): {sorted(set(dups))[:10]}"
        )
    return list(classes)


def _shown(name: str) -> str:
    """A name for a message: escaped, at most 40 characters."""
    text = name if len(name) <= 40 else name[:37] + "..."
    return ascii(text) if not text.isprintable() else repr(text)


def display_name(name: str) -> str:
    """The first synonym, stripped: what legends and tables show."""
    return name.split(SYNONYM_SEPARATOR)[0].strip()


def build_prompts(classes: list[str], templates: tuple[str, ...] = IMAGENET_TEMPLATES) -> tuple[list[str], list[int]]:
    """Prompts for every class, template-major over synonyms, and the synonym count per class.

    Class t with k synonyms contributes ``len(templates) * k`` consecutive prompts ordered
    (template, synonym), exactly as the official ``class_embeddings``.
    """
    prompts: list[str] = []
    counts: list[int] = []
    for name in classes:
        synonyms = name.split(SYNONYM_SEPARATOR) if SYNONYM_SEPARATOR in name else [name]
        prompts.extend(t.format(s) for t in templates for s in synonyms)
        counts.append(len(synonyms))
    return prompts, counts


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    # Same eps semantics as torch.nn.functional.normalize.
    norm = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=-1, keepdims=True))
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def pool_text_embeddings(embeddings: np.ndarray, counts: list[int], num_templates: int) -> np.ndarray:
    """Turn per-prompt embeddings (Q, E) into per-class, per-template features (T, P, E).

    Each prompt embedding is L2-normalised; synonyms are averaged per template and
    normalised again. There is no averaging over templates.
    """
    q_total = num_templates * sum(counts)
    if embeddings.ndim != 2 or embeddings.shape[0] != q_total:
        raise ValueError(f"embeddings | got shape {embeddings.shape} | expected ({q_total}, E)")
    emb = _l2_normalize(embeddings)
    out = np.empty((len(counts), num_templates, emb.shape[1]), dtype=np.float32)
    offset = 0
    for t, k in enumerate(counts):
        block = emb[offset : offset + num_templates * k].reshape(num_templates, k, -1)  # (P k) E -> P k E
        out[t] = block[:, 0] if k == 1 else _l2_normalize(block.mean(axis=1))
        offset += num_templates * k
    return out


def printable(text: str) -> str:
    """Text for a terminal or a log line: control characters (ANSI escapes, newlines, carriage
    returns) shown escaped, so a class or file name cannot clear a screen or forge a line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
