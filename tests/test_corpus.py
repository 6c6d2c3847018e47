"""The built-in demo corpus: deterministic, sized, dialogues and stories, a real vocabulary."""
import re

from sllm.corpus import generate_corpus, write_corpus


def test_deterministic_and_seeded():
    assert generate_corpus(20_000, seed=1) == generate_corpus(20_000, seed=1)
    assert generate_corpus(20_000, seed=1) != generate_corpus(20_000, seed=2)


def test_size_and_document_kinds():
    text = generate_corpus(300_000)
    assert 300_000 <= len(text) < 302_000
    docs = text.strip().split("\n\n")
    dialogues = [d for d in docs if d.startswith("A: ")]
    stories = [d for d in docs if d.startswith("Once upon a time")]
    assert len(dialogues) + len(stories) == len(docs)
    assert 0.4 < len(dialogues) / len(docs) < 0.6
    for d in dialogues[:50]:
        speakers = [line[:2] for line in d.splitlines()]
        assert speakers == ["A:", "B:"] * (len(speakers) // 2) + ["A:"] * (len(speakers) % 2)


def test_vocabulary_is_large_enough():
    words = set(re.findall(r"\w+(?:'\w+)*", generate_corpus(3_000_000)))
    assert len(words) > 1200


def test_write_corpus(tmp_path):
    path = write_corpus(tmp_path / "c.txt", 10_000, seed=4)
    assert open(path, encoding="utf-8").read() == generate_corpus(10_000, seed=4)
