"""Vocabularies, prompts, synonym pooling and the torch-free tokenizer."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from sed_trt.runtime.errors import VocabularyError
from sed_trt.runtime.tokenizer import ClipTokenizer, trim_tokens
from sed_trt.runtime.vocab import (
    IMAGENET_TEMPLATES,
    build_prompts,
    builtin_vocabulary_text,
    class_key,
    load_vocabulary,
    pool_text_embeddings,
)

OFFICIAL_MD5 = {
    "coco171": ("bd6c981512a726d460d8e94af131124b", 171),
    "ade150": ("3eb3a9e5162c6746938508c5eb7dde8a", 150),
    "ade847": ("daa25e9132bda6c74219d644ca5f10ca", 847),
    "pc59": ("35935e31e54dbcb20797a013ee237c11", 59),
    "pc459": ("8e4aa38be9ba2008e8df0fe68a9a7176", 459),
    "voc20": ("985603d0bedbf3b09d55dbf977c7f6a0", 20),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_MD5))
def test_builtin_vocabularies_are_the_official_files(name):
    text = builtin_vocabulary_text(name)
    md5, count = OFFICIAL_MD5[name]
    assert hashlib.md5(text.encode()).hexdigest() == md5
    assert len(load_vocabulary(name)) == count


def test_ade847_synonyms_and_templates():
    assert sum(", " in c for c in load_vocabulary("ade847")) == 217
    assert (
        len(IMAGENET_TEMPLATES) == 80
        and IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
        and IMAGENET_TEMPLATES[79] == "a tattoo of the {}."
    )


def test_prompts_template_major_and_pooling():
    prompts, counts = build_prompts(["sky", "building, edifice"], IMAGENET_TEMPLATES[:2])
    assert prompts == [
        "a bad photo of a sky.",
        "a photo of many sky.",
        "a bad photo of a building.",
        "a bad photo of a edifice.",
        "a photo of many building.",
        "a photo of many edifice.",
    ]
    assert counts == [1, 2]
    emb = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    out = pool_text_embeddings(emb, counts, 2)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    syn = (unit[2] + unit[3]) / 2
    np.testing.assert_allclose(out[1, 0], syn / np.linalg.norm(syn), rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], unit[1], rtol=1e-6)


def test_inline_files_and_errors(tmp_path):
    assert load_vocabulary("cat, dog ,sky") == ["cat", "dog", "sky"]
    assert load_vocabulary("building, edifice; sky") == ["building, edifice", "sky"]
    (tmp_path / "v.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "v.txt").write_text("a\nroad, route\n\n")
    assert load_vocabulary(str(tmp_path / "v.json")) == ["a", "b"]
    assert load_vocabulary(str(tmp_path / "v.txt")) == ["a", "road, route"]
    with pytest.raises(VocabularyError, match="empty"):
        load_vocabulary(" , ")
    with pytest.raises(VocabularyError, match="duplicate class names.*Cat"):
        load_vocabulary("cat,dog,Cat")
    with pytest.raises(VocabularyError, match="vocabulary file .* does not exist"):
        load_vocabulary(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VocabularyError, match="not valid JSON"):
        load_vocabulary(str(tmp_path / "bad.json"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(VocabularyError, match="empty"):
        load_vocabulary(str(tmp_path / "empty.txt"))


def test_tokenizer_matches_open_clip():
    open_clip = pytest.importorskip("open_clip")
    classes = load_vocabulary("ade847")[::7] + ["café &amp; crème", "x" * 400, "bed "]
    prompts, _ = build_prompts(classes)
    ours = ClipTokenizer()(prompts)
    theirs = open_clip.get_tokenizer("convnext_base_w_320")(prompts).numpy()
    np.testing.assert_array_equal(ours, theirs)
    trimmed = trim_tokens(ours[:50])
    assert trimmed.shape[1] < 77 and (trimmed.argmax(1) == ours[:50].argmax(1)).all()


def test_class_key_shortcut_equals_clip_cleaning():
    """The ASCII shortcut of class_key gives the key ftfy and html-unescaping give."""
    rng = np.random.default_rng(0)
    printable = [chr(c) for c in range(32, 127)]
    names = load_vocabulary("ade847") + ["".join(rng.choice(printable, size=rng.integers(1, 40))) for _ in range(3000)]
    names += ["  Wide   space  ", "a\tb", "AT&amp;T", "x\x07y", "caf\u00e9"]  # the last three take the long way
    for name in names:
        assert class_key(name) == ClipTokenizer.clean(name).casefold(), name
