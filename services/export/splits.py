"""Split assignment: by problem, never by rationale, so no problem is in two splits.

A problem is in `validation` when `u < val_fraction`, where `u` is the first 8 bytes of
sha256(seed, 0x1f, normalised question) read as a fraction of 2**64; otherwise in `train`. The
question is normalised (lower-cased, whitespace collapsed) before hashing, so the same question
ingested in two corpora, or twice in one, always lands in the same split. The assignment
depends on nothing else: adding problems never moves another problem between splits.
"""

from __future__ import annotations

import hashlib

TRAIN = "train"
VALIDATION = "validation"


def split_of(question: str, seed: str, val_fraction: float) -> str:
    if val_fraction <= 0:
        return TRAIN
    key = " ".join(question.lower().split())
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return VALIDATION if u < val_fraction else TRAIN


__all__ = ["TRAIN", "VALIDATION", "split_of"]
