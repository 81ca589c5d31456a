"""Checkpoints of pytrees: one ``.npz`` file, no pickle, a checksum, the run's identity checked.

Why not Orbax: a training state here is a few arrays, and what matters is that a resume is
bit-identical and refuses the wrong file; one NumPy archive written atomically does both with
no new dependency. The archive holds the leaves (``leaf_00000``...; PRNG keys as their key
data) and ``meta``, UTF-8 JSON: the caller's identity (configuration, seed), each leaf's
dtype and shape, and a SHA-256 over the leaves and the identity. Loading checks, in order: the
file opens without pickle, the checksum, the identity (each mismatching key named), then the
leaves against the expected structure.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ppl.transforms._files import atomic_open, strict

FORMAT = "ppl-checkpoint-1"


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_numpy(leaf: Any) -> np.ndarray:
    return np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)


def _digest(leaves: list[np.ndarray], identity: str) -> str:
    h = hashlib.sha256(identity.encode())
    for leaf in leaves:
        h.update(str(leaf.dtype).encode() + str(leaf.shape).encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, tree: Any, identity: dict[str, Any]) -> None:
    """Write ``tree`` (any pytree of arrays and PRNG keys) with ``identity`` (JSON-able), atomically."""
    leaves = [_to_numpy(x) for x in jax.tree_util.tree_leaves(tree)]
    ident = json.dumps(strict(identity), sort_keys=True)
    meta = {
        "format": FORMAT,
        "identity": json.loads(ident),
        "leaves": [[str(x.dtype), list(x.shape)] for x in leaves],
        "sha256": _digest(leaves, ident),
    }
    arrays = {f"leaf_{i:05d}": x for i, x in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path: str | os.PathLike, like: Any, identity: dict[str, Any]) -> Any:
    """Read a checkpoint written for ``identity`` into the structure of ``like``.

    Raises ``ValueError`` naming what differs: a corrupt or modified file (checksum), another
    run (each identity key that differs), or another structure (leaf count, shapes, dtypes).
    """
    where = f"checkpoint {os.fspath(path)!r}"
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(bytes(archive["meta"]).decode())
            if not isinstance(meta, dict) or not {"leaves", "identity", "sha256"} <= meta.keys():
                raise KeyError("its metadata lacks 'leaves', 'identity' or 'sha256'")
            leaves = [archive[f"leaf_{i:05d}"] for i in range(len(meta["leaves"]))]
    except Exception as e:  # any failure to read (truncated zip, bad zlib stream, foreign JSON...)
        raise ValueError(f"{where} cannot be read as a ppl checkpoint: {type(e).__name__}: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where} has format {meta.get('format')!r}, expected {FORMAT!r}")
    stored = json.dumps(meta["identity"], sort_keys=True)
    if _digest(leaves, stored) != meta["sha256"]:
        raise ValueError(
            f"{where}: checksum mismatch, the file is corrupt or was modified; delete it to start over"
        )
    expected = json.loads(json.dumps(strict(identity), sort_keys=True))
    differing = sorted(
        k for k in set(expected) | set(meta["identity"]) if expected.get(k) != meta["identity"].get(k)
    )
    if differing:
        shown = "; ".join(
            f"{k}: stored {meta['identity'].get(k)!r}, this run {expected.get(k)!r}" for k in differing
        )
        raise ValueError(f"{where} belongs to another run ({shown}); use another path or delete it")
    like_leaves, treedef = jax.tree_util.tree_flatten(like)
    if len(like_leaves) != len(leaves):
        raise ValueError(f"{where} has {len(leaves)} arrays, this run's state has {len(like_leaves)}")
    out = []
    for i, (stored_leaf, template) in enumerate(zip(leaves, like_leaves)):
        want = _to_numpy(template)
        if stored_leaf.shape != want.shape or stored_leaf.dtype != want.dtype:
            raise ValueError(
                f"{where}: array {i} is {stored_leaf.dtype}{list(stored_leaf.shape)}, this run's state "
                f"has {want.dtype}{list(want.shape)}"
            )
        leaf = jnp.asarray(stored_leaf)
        out.append(
            jax.random.wrap_key_data(leaf, impl=jax.random.key_impl(template)) if _is_key(template) else leaf
        )
    return jax.tree_util.tree_unflatten(treedef, out)
