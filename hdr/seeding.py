"""Deterministic seeds: every random draw of the toolkit comes from ``derive_seed(dataset_seed, *keys)``."""
from __future__ import annotations

import hashlib

import numpy as np

SEED_DERIVATION = "blake2b-64(f'{dataset_seed}/{key1}/{key2}/...')"


def derive_seed(dataset_seed: int, *keys: object) -> int:
    """A 63-bit seed from the dataset seed and keys such as (hdri_id, clip_id); the same on every machine."""
    text = "/".join([str(int(dataset_seed)), *map(str, keys)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def rng(dataset_seed: int, *keys: object) -> np.random.Generator:
    """numpy Generator (PCG64) seeded by :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(dataset_seed, *keys))
