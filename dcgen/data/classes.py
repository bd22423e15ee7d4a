"""The unified semantic class table and the raw-to-unified maps of every source dataset (SPEC §1).

This is the one place class ids, names and colours are defined; everything else imports it. Raw maps are
lookup tables of 256 entries so a whole array is remapped with one fancy index; ids a source never uses map to
``INVALID`` and are reported as errors by ``remap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FREE = 0
INVALID = 255


@dataclass(frozen=True)
class SemanticClass:
    id: int
    name: str
    rgb: tuple[int, int, int]


CLASSES: tuple[SemanticClass, ...] = (
    SemanticClass(0, "free", (0, 0, 0)),
    SemanticClass(1, "building", (255, 118, 72)),
    SemanticClass(2, "barrier", (100, 40, 40)),
    SemanticClass(3, "other", (55, 90, 80)),
    SemanticClass(4, "pedestrian", (0, 0, 255)),
    SemanticClass(5, "pole", (153, 153, 153)),
    SemanticClass(6, "road", (255, 0, 255)),
    SemanticClass(7, "ground", (31, 135, 23)),
    SemanticClass(8, "sidewalk", (179, 52, 255)),
    SemanticClass(9, "vegetation", (159, 255, 84)),
    SemanticClass(10, "vehicle", (0, 215, 255)),
    SemanticClass(11, "bicycle", (102, 102, 156)),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CLASS_IDS: dict[str, int] = {c.name: c.id for c in CLASSES}
PALETTE = np.array([c.rgb for c in CLASSES], dtype=np.uint8)  # [K, 3]
VEHICLE = CLASS_IDS["vehicle"]
ROAD = CLASS_IDS["road"]

# CarlaSC has no bicycle class: its clips use ids 0..10, Occ3D's 0..11.
NUM_CLASSES_CARLASC = 11
NUM_CLASSES_UNIFIED = len(CLASSES)


def _lut(pairs: dict[int, int]) -> np.ndarray:
    lut = np.full(256, INVALID, dtype=np.uint8)
    for raw, unified in pairs.items():
        lut[raw] = unified
    lut.flags.writeable = False
    return lut


CARLASC_TO_UNIFIED = _lut({
    0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 6, 8: 8, 9: 9, 10: 10, 11: 2, 12: 5,
    13: 3, 14: 7, 15: 3, 16: 3, 17: 2, 18: 5, 19: 3, 20: 3, 21: 3, 22: 7,
})

NUSCENES_RAW_NAMES = (
    "others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain", "manmade",
    "vegetation", "free",
)
NUSCENES_FREE = 17
NUSCENES_TO_UNIFIED = _lut({
    0: 3, 1: 2, 2: 11, 3: 10, 4: 10, 5: 10, 6: 11, 7: 4, 8: 5, 9: 10, 10: 10,
    11: 6, 12: 7, 13: 8, 14: 7, 15: 1, 16: 9, 17: 0,
})

WAYMO_RAW_NAMES = (
    "general_object", "vehicle", "pedestrian", "sign", "cyclist", "traffic_light", "pole", "construction_cone",
    "bicycle", "motorcycle", "building", "vegetation", "tree_trunk", "road", "walkable",
)
WAYMO_FREE_IDS = (23, 15)  # 23 in the public release; some conversions write 15
WAYMO_TO_UNIFIED = _lut({
    0: 3, 1: 10, 2: 4, 3: 5, 4: 11, 5: 5, 6: 5, 7: 5, 8: 11, 9: 11, 10: 1, 11: 9, 12: 9, 13: 6, 14: 8,
    15: 0, 23: 0,
})


def remap(raw: np.ndarray, lut: np.ndarray, what: str) -> np.ndarray:
    """Map raw class ids to unified ids; raise naming ``what`` if any id is outside the source's range."""
    if raw.dtype.kind not in "iu":
        raise ValueError(f"{what}: class ids must be integers, got dtype {raw.dtype}")
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise ValueError(f"{what}: class id {int(raw.max()) if raw.max() > 255 else int(raw.min())} "
                         f"is outside 0..255")
    out = lut[raw.astype(np.intp, copy=False)]
    bad = out == INVALID
    if bad.any():
        ids = sorted(set(np.unique(raw[bad]).tolist()))
        valid = [i for i in range(256) if lut[i] != INVALID]
        raise ValueError(f"{what}: class ids {ids[:8]} are not valid for this dataset "
                         f"(expected ids in {valid[0]}..{valid[-1]}: {valid})")
    return out


def check_unified(occ: np.ndarray, num_classes: int, what: str) -> None:
    """Raise naming ``what`` unless ``occ`` holds unified ids in ``0..num_classes-1``."""
    if occ.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 class ids, got dtype {occ.dtype}")
    if occ.size and int(occ.max()) >= num_classes:
        raise ValueError(f"{what}: class id {int(occ.max())} is out of range; expected 0..{num_classes - 1}")
