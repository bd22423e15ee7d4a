"""Integrity of scene stores: per-clip checksums recorded in the manifest and checked on read, a whole-store
check (``dcgen data verify``), and building a replacement store beside the old one (``staged``).

Zarr reads a missing chunk as its fill value, so without a record of what was written a deleted shard file would
read back as an all-free clip. Each manifest row records a CRC-32C of every array's clip (``crc32c_<array>``);
stores written before the checksums are checked on occupancy's class counts.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from typing import Iterator

import numpy as np

from dcgen import storage

CHECKSUM_PREFIX = "crc32c_"  # manifest column of each array's per-clip checksum


def clip_checksum(values: np.ndarray) -> int:
    """CRC-32C of one clip's C-order bytes (bool as 0/1 bytes); hardware CRC, ~2.5 GB/s."""
    import google_crc32c

    return int(google_crc32c.value(np.ascontiguousarray(values).view(np.uint8).tobytes()))


def clip_problems(store, indices: np.ndarray, batch: dict[str, np.ndarray], *,
                  first_only: bool = False) -> list[tuple[int, str]]:
    """``(clip, what is wrong)`` for each listed clip of ``batch`` whose arrays do not match the manifest."""
    listed, recorded = _recorded(store)
    if listed.size == 0:
        return []
    pos = np.minimum(np.searchsorted(listed, indices), listed.size - 1)
    out = []
    for k in np.flatnonzero(listed[pos] == indices):
        row, clip = int(pos[k]), int(indices[k])
        for name, values in batch.items():
            want = recorded.get(name)
            want = None if want is None else want[row]
            if want is not None:
                bad = clip_checksum(values[k]) != want
            elif name == "occupancy":  # a store written before the checksums: its class counts
                got = np.bincount(values[k].ravel(), minlength=store.grid.num_classes)
                bad = not np.array_equal(got, recorded["class_counts"][row])
            else:
                continue
            if bad:
                out.append((clip, _damage(name, values[k], store)))
                if first_only:
                    return out
    return out

def _recorded(store) -> tuple[np.ndarray, dict[str, list]]:
    """Listed clip indices and, per array, what the manifest recorded of each row (None where nothing)."""
    table = store.raw_manifest()
    if store._recorded_for is not table:  # per-store cache, rebuilt when the manifest changes
        columns = {n: table.column(CHECKSUM_PREFIX + n).to_pylist() for n in store.array_names
                   if CHECKSUM_PREFIX + n in table.column_names}
        columns["class_counts"] = [np.asarray(c, dtype=np.int64)
                                   for c in table.column("class_counts").to_pylist()] if table.num_rows else []
        store._recorded_cache = (table.column("index").to_numpy(), columns)
        store._recorded_for = table
    return store._recorded_cache


def verify_store(store) -> dict:
    """Check every listed clip of ``store`` against the manifest (and the manifest against the arrays): a JSON-able report.

    ``ok`` is true when nothing is damaged; ``damaged`` maps clip -> what is wrong; ``problems`` lists damage
    to the store as a whole (manifest rows beyond the arrays, duplicate rows, unreadable parts).
    """
    problems: list[str] = []
    damaged: dict[int, list[str]] = {}
    try:
        table = store.raw_manifest()
    except ValueError as e:
        return {"path": store.path, "ok": False, "clips": 0, "checked": 0, "damaged": {}, "problems": [str(e)]}
    idx = table.column("index").to_numpy()
    if np.unique(idx).size != idx.size:
        problems.append(f"the manifest lists {idx.size - np.unique(idx).size} clips twice")
    beyond = idx[idx >= store.capacity]
    if beyond.size:
        problems.append(f"the manifest lists {beyond.size} clips ({int(beyond[0])}..{int(beyond[-1])}) beyond "
                        f"the arrays' {store.capacity} clips")
    checked = 0
    for i in idx[idx < store.capacity]:
        i = int(i)
        batch = {}
        for name in store.array_names:
            try:
                batch[name] = store.read_array(name, slice(i, i + 1), np.array([i]))
            except ValueError as e:
                damaged.setdefault(i, []).append(str(e).split(": ", 1)[-1])
        for clip, message in clip_problems(store, np.array([i]), batch):
            damaged.setdefault(clip, []).append(message)
        checked += 1
    return {"path": store.path, "ok": not problems and not damaged, "clips": int(idx.size), "checked": checked,
            "damaged": {str(k): v for k, v in sorted(damaged.items())}, "problems": problems}


def _damage(name: str, values: np.ndarray, store) -> str:
    """What a clip's array that fails its checksum looks like, in words."""
    if name == "occupancy" and values.size and int(values.max()) >= store.grid.num_classes:
        return (f"array 'occupancy' holds class id {int(values.max())}, expected 0..{store.grid.num_classes - 1} "
                "(it differs from what was written)")
    if not values.any():
        return (f"array {name!r} reads back empty (all fill value) but was written with data: its chunk is "
                "missing")
    return f"array {name!r} differs from what was written (checksum mismatch): its chunk is damaged"


@contextlib.contextmanager
def staged(out: str, overwrite: bool) -> Iterator[str]:
    """A hidden sibling path to build a store in, swapped in at ``out`` only if the block succeeds.

    Until the swap the store at ``out`` (if any) stays whole, so a job that fails half-way (a bad file found while
    writing) loses nothing; on failure the partial build is removed. ``overwrite`` must allow an existing ``out``.
    """
    if storage.exists(out) and not overwrite:
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it")
    parent, name = posixpath.split(str(out).rstrip("/"))
    tmp = posixpath.join(parent, f".{name}.building-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        storage.remove_dir(tmp)
        raise
    storage.replace_tree(tmp, out)
