"""The scene store's manifest: ``manifest/part-SSSSSSSSS-EEEEEEEEE.parquet``, one row per committed clip.

Columns: ``MANIFEST_COLUMNS`` (defaults filled for synthetic writers), ``class_counts`` (voxels per class id), one
``crc32c_<array>`` checksum per array (``integrity``), and whatever extra keys a job adds (JSON strings for lists
and dicts). ``schemas/manifest.schema.json`` describes a row.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from dcgen.data.integrity import CHECKSUM_PREFIX, clip_checksum

MANIFEST_COLUMNS = {
    "index": "int64",      # position of the clip in the arrays
    "scene": "string",     # source scene / sequence name
    "frame_start": "int64",  # first source frame of the clip's window
    "split": "string",     # train | val | test
    "seed": "int64",       # generator seed for synthetic clips, -1 for imported ones
    "source": "string",    # dataset or job that produced the clip
}


def manifest_table(start: int, batch: dict[str, np.ndarray], rows: Sequence[dict], *, source: str, num_classes: int,
                   array_names: Sequence[str]):
    """The manifest part of clips ``start..``: the rows (defaults filled, extra keys as JSON), class counts and
    each array's per-clip checksum."""
    import pyarrow as pa

    n = len(rows)
    cols: dict[str, list] = {k: [] for k in MANIFEST_COLUMNS}
    extra_keys = sorted({k for r in rows for k in r} - set(MANIFEST_COLUMNS))
    for key in extra_keys:
        cols[key] = []
    for i, row in enumerate(rows):
        if "index" in row and int(row["index"]) != start + i:
            raise ValueError(f"manifest row {i} has index {row['index']}, expected {start + i}")
        for key in MANIFEST_COLUMNS:
            default = {"index": start + i, "seed": -1, "frame_start": 0, "split": "train",
                       "source": source}.get(key)
            value = row.get(key, default)
            if value is None:
                raise ValueError(f"manifest row {i} lacks {key!r}")
            cols[key].append(value)
        for key in extra_keys:
            cols[key].append(row.get(key))
    occ = np.asarray(batch["occupancy"]).reshape(n, -1)
    counts = [np.bincount(o, minlength=num_classes).astype(np.int64).tolist() for o in occ]
    arrays = {k: pa.array(v, type=pa_type(MANIFEST_COLUMNS[k])) for k, v in cols.items() if k in MANIFEST_COLUMNS}
    arrays.update({k: pa.array([_jsonable(x) for x in cols[k]]) for k in extra_keys})
    arrays["class_counts"] = pa.array(counts, type=pa.list_(pa.int64()))
    for name in array_names:
        values = np.asarray(batch[name])
        arrays[CHECKSUM_PREFIX + name] = pa.array([clip_checksum(v) for v in values], type=pa.int64())
    return pa.table(arrays)


def pa_type(name: str):
    import pyarrow as pa

    return {"int64": pa.int64(), "string": pa.string()}[name]


def _jsonable(x):
    if isinstance(x, (dict, list)):
        return json.dumps(x, sort_keys=True)
    if isinstance(x, np.generic):
        return x.item()
    return x
