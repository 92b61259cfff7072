"""The agreement judge of `arm evaluate` on a user's data, on features whose answer is known: which judge
the prompts call for, and that each learns to match images to their own prompts (and nothing else)."""

from __future__ import annotations

import torch

from arm.evaluate.agreement import CANDIDATES, ClassifierJudge, RetrievalJudge, closed_label_set


def _features(labels: list[int], dim: int = 64, noise: float = 0.3, seed: int = 0) -> torch.Tensor:
    """An image feature per label: the label's own direction plus noise (what a good encoder gives)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(max(labels) + 1, dim, generator=torch.Generator().manual_seed(123))
    return directions[labels] + noise * torch.randn(len(labels), dim, generator=g)


def test_closed_label_sets_get_a_classifier_that_names_the_label():
    names = [f"a handwritten digit {d}" for d in range(10)]
    train = [i % 10 for i in range(200)]
    judge = ClassifierJudge(names, _features(train), [names[i] for i in train])
    test = [i % 10 for i in range(50)]
    right = judge.agrees_features(_features(test, seed=1), [names[i] for i in test])
    wrong = judge.agrees_features(_features(test, seed=1), [names[(i + 1) % 10] for i in test])
    assert sum(right) / 50 > 0.95 and sum(wrong) / 50 < 0.05


def test_open_text_gets_a_retrieval_judge_that_ranks_the_own_prompt_first():
    """Every picture has its own caption (no closed set): the judge maps Inception-like features and
    MiniLM's sentence embeddings into one space and ranks an image's prompt among 32."""
    things = ["cat", "boat", "tree", "car", "house", "horse", "bridge", "clock", "lamp", "apple", "guitar", "kite",
              "chair", "train", "flower", "mountain", "bicycle", "umbrella", "castle", "rocket"]
    places = ["on a beach", "in the snow", "at night", "in a forest"]
    train = [f"a {t} {p}" for p in places[:3] for t in things]                  # 60 captions
    test = [f"a {t} {places[3]}" for t in things]                               # 20 captions never trained on
    assert closed_label_set(train, test) is None
    thing = lambda caption: things.index(caption.split()[1])                    # noqa: E731 - what it shows
    judge = RetrievalJudge(_features([thing(c) for c in train] * 3, seed=2), train * 3, test, steps=300)
    images = _features([thing(c) for c in test], seed=3)
    right = judge.agrees_features(images, test)
    wrong = judge.agrees_features(images, test[5:] + test[:5])                  # another thing's caption
    chance = 1 / min(CANDIDATES, len(test))
    assert sum(right) / len(test) > 5 * chance and sum(wrong) < sum(right) / 4, (sum(right), sum(wrong))
