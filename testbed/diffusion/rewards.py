"""Image rewards, pluggable like the LM track's: ``reward(images [B, C, H, W] in [-1, 1], prompts [B]) -> [B]``.

- ``jpeg_compressibility`` / ``jpeg_incompressibility``: minus / plus the size in kB of the image saved as JPEG
  by Pillow (quality 95), DDPO's two tasks (Black et al. 2023, §6.1);
- ``classifier``: prompt alignment, a small classifier's probability that the image shows the prompted class
  (multinomial logistic regression from scikit-learn, trained in the pipeline on the pre-training data);
- ``aesthetic``: the LAION aesthetic predictor on CLIP ViT-L/14 (:mod:`testbed.diffusion.aesthetic`; the paper's);
- ``module``: any ``pkg.mod:fn`` with the signature above.
"""

from __future__ import annotations

import io

import numpy as np


def to_uint8(images) -> np.ndarray:
    """[-1, 1] floats [B, C, H, W] -> uint8 [B, H, W, C] (clipped, rounded)."""
    x = np.asarray(images, dtype=np.float64)
    return np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def jpeg_kb(images, quality: int = 95) -> np.ndarray:
    """Size of each image as a Pillow JPEG, in kB (1000 bytes)."""
    from PIL import Image

    out = []
    for a in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="JPEG", quality=quality)
        out.append(buf.tell() / 1000)
    return np.asarray(out)


class JpegReward:
    def __init__(self, sign: float, quality: int = 95):
        self.sign, self.quality = sign, quality

    def __call__(self, images, prompts):
        return self.sign * jpeg_kb(images, self.quality)


class ClassifierReward:
    """p(prompted class | image) from a fitted scikit-learn classifier on flattened images."""

    def __init__(self, clf):
        self.clf = clf

    def __call__(self, images, prompts):
        x = np.clip(np.asarray(images, dtype=np.float64), -1, 1).reshape(len(images), -1)
        p = self.clf.predict_proba(x)
        cols = np.searchsorted(self.clf.classes_, np.asarray(prompts))
        return p[np.arange(len(x)), cols]


def fit_classifier(images: np.ndarray, labels: np.ndarray, seed: int = 0):
    """Multinomial logistic regression on flattened [-1, 1] images (deterministic: lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=500, C=0.5, random_state=seed)
    return clf.fit(images.reshape(len(images), -1), labels)


def make_reward(entry: dict, data=None):
    """The reward of a spec's ``reward`` block (``data``: (images, labels) for the classifier)."""
    kind = entry.get("kind")
    if kind == "module":
        from testbed.llm.checks import check_reward_module
        return check_reward_module(entry["module"], "reward.module")
    if kind in ("jpeg_compressibility", "jpeg_incompressibility"):
        return JpegReward(-1.0 if kind == "jpeg_compressibility" else 1.0, entry.get("quality", 95))
    if kind == "classifier":
        return ClassifierReward(fit_classifier(*data))
    if kind == "aesthetic":
        from testbed.diffusion.aesthetic import AestheticReward
        return AestheticReward(entry)
    raise ValueError(f"unknown reward kind {kind!r}")
