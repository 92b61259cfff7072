"""Does a generated image show its prompt? Judged by something other than the model itself, trained in
the evaluate stage on the training split's text-to-image pairs, on frozen features:

- closed set (`ClassifierJudge`): when the prompts come from a small set of labels (digit names, class
  names: every test prompt is also a training prompt, and there are at most `MAX_LABELS`), a linear
  classifier over the packaged Inception network's pool features, trained on the training images;
  an image agrees when the classifier names its prompt.
- open text (`RetrievalJudge`): otherwise, the packaged Inception features of the image and MiniLM's
  embedding of the prompt, each mapped by a linear layer into one space trained contrastively on the
  training pairs (CLIP's objective, with both encoders frozen); an image agrees when its own prompt
  ranks first among it and `CANDIDATES - 1` other test prompts (chance 1 / CANDIDATES).

No public image-text model ships in a package we can install offline (CLIP's weights come from a hub),
so the judge is trained here, on the user's own pairs; its score on the split's real images is reported
beside (`gen/agreement_real`): the ceiling a generator can reach under this judge.

Also FID and KID of generated images against the split's images, on the same Inception features (KID
with a 95% interval from its subsets; FID's bias depends on the number of images, so compare FIDs at
equal counts).

>>> closed_label_set(["a 3", "a 5", "a 3"], ["a 5"])
['a 3', 'a 5']
>>> closed_label_set(["a red car on a road", "a dog"], ["a cat"]) is None
True
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

MAX_LABELS = 1000
CANDIDATES = 32


def inception_features(images: np.ndarray, batch_size: int = 50) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 2048) pool features of the packaged Inception network."""
    from arm.evaluate.fidelity import PackagedInception

    net = _inception()
    feats = [net(torch.as_tensor(images[i:i + batch_size]).permute(0, 3, 1, 2)) for i in range(0, len(images), batch_size)]
    return torch.cat(feats).float() if feats else torch.zeros(0, PackagedInception.num_features)


_INCEPTION = None


def _inception():
    global _INCEPTION
    if _INCEPTION is None:
        from arm.evaluate.fidelity import PackagedInception

        _INCEPTION = PackagedInception()
    return _INCEPTION


def closed_label_set(train_prompts: list[str], test_prompts: list[str]) -> list[str] | None:
    """The sorted labels when the prompts are a closed set: every test prompt occurs in training and
    there are at most MAX_LABELS distinct ones; else None."""
    labels = sorted(set(train_prompts))
    if len(labels) > MAX_LABELS or not set(test_prompts) <= set(labels):
        return None
    return labels


class ClassifierJudge:
    kind = "classifier"

    def __init__(self, labels: list[str], features: torch.Tensor, prompts: list[str], seed: int = 0, steps: int = 300):
        self.labels = labels
        self.index = {label: i for i, label in enumerate(labels)}
        self.mean, self.std = features.mean(0), features.std(0).clamp_min(1e-6)
        x = (features - self.mean) / self.std
        y = torch.tensor([self.index[p] for p in prompts])
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(x.shape[1], len(labels))
        opt = torch.optim.AdamW(self.head.parameters(), lr=1e-2, weight_decay=1e-2)
        for _ in range(steps):
            loss = F.cross_entropy(self.head(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    @torch.no_grad()
    def agrees_features(self, features: torch.Tensor, prompts: list[str]) -> list[bool]:
        predicted = self.head((features - self.mean) / self.std).argmax(-1).tolist()
        return [self.labels[p] == prompt for p, prompt in zip(predicted, prompts)]

    def agrees(self, images: np.ndarray, prompts: list[str]) -> list[bool]:
        return self.agrees_features(inception_features(images), prompts)


class RetrievalJudge:
    kind = "retrieval"

    def __init__(self, features: torch.Tensor, prompts: list[str], candidates: list[str], seed: int = 0,
                 steps: int = 300, dim: int = 256, batch: int = 128):
        from arm.tokenizer.text_encoders import build_text_encoder

        self.text = build_text_encoder("minilm")
        self.candidates = sorted(set(candidates))
        self.seed = seed
        self.mean, self.std = features.mean(0), features.std(0).clamp_min(1e-6)
        x = (features - self.mean) / self.std
        t = self.text.encode(prompts)
        torch.manual_seed(seed)
        self.image_map, self.text_map = torch.nn.Linear(x.shape[1], dim), torch.nn.Linear(t.shape[1], dim)
        self.log_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))
        params = [*self.image_map.parameters(), *self.text_map.parameters(), self.log_scale]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            pick = torch.randperm(len(x), generator=g)[:batch]
            logits = self._similarity(x[pick], t[pick])                      # (b, b): image i against text j
            # Rows of the same prompt are not negatives of each other.
            same = torch.tensor([[prompts[i] == prompts[j] for j in pick.tolist()] for i in pick.tolist()])
            logits = logits.masked_fill(same & ~torch.eye(len(pick), dtype=torch.bool), float("-inf"))
            target = torch.arange(len(pick))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()

    def _similarity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = F.normalize(self.image_map(x), dim=-1)
        b = F.normalize(self.text_map(t), dim=-1)
        return self.log_scale.exp() * a @ b.T

    @torch.no_grad()
    def agrees_features(self, features: torch.Tensor, prompts: list[str]) -> list[bool]:
        rng = random.Random(self.seed)
        x = (features - self.mean) / self.std
        texts = sorted(set(self.candidates) | set(prompts))
        index = {t: i for i, t in enumerate(texts)}
        embedded = self.text.encode(texts)                          # each text once: (T, 384)
        out = []
        for row, prompt in enumerate(prompts):
            others = [c for c in self.candidates if c != prompt]
            chosen = [prompt] + rng.sample(others, min(CANDIDATES - 1, len(others)))
            scores = self._similarity(x[row:row + 1], embedded[[index[c] for c in chosen]])[0]
            out.append(int(scores.argmax()) == 0)
        return out

    def agrees(self, images: np.ndarray, prompts: list[str]) -> list[bool]:
        return self.agrees_features(inception_features(images), prompts)


def fit_judge(train_images: np.ndarray, train_prompts: list[str], test_prompts: list[str], seed: int = 0):
    """The judge the prompts call for (module docstring), trained on the training pairs."""
    features = inception_features(train_images)
    labels = closed_label_set(train_prompts, test_prompts)
    if labels is not None:
        return ClassifierJudge(labels, features, train_prompts, seed)
    return RetrievalJudge(features, train_prompts, test_prompts, seed)


def fid_and_kid(real: np.ndarray, fake: np.ndarray, seed: int = 0, subsets: int = 100) -> dict:
    """FID (a point value) and KID (its mean over `subsets` random subsets of min(n, 100) images, and
    +- 1.96 standard deviations of the subset estimates) of two uint8 image sets; {} under 2 images."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(len(real), len(fake), 100)
    if size < 2:
        return {}
    torch.manual_seed(seed)
    fid = FrechetInceptionDistance(feature=_inception(), normalize=False)
    kid = KernelInceptionDistance(feature=_inception(), subsets=subsets, subset_size=size, normalize=False)
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), 50):
            batch = torch.as_tensor(images[start:start + 50]).permute(0, 3, 1, 2)
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_low": float(kid_mean - 1.96 * kid_std),
            "kid_high": float(kid_mean + 1.96 * kid_std), "n_real": len(real), "n_generated": len(fake)}
