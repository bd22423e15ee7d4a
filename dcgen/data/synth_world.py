"""The static half of the synthetic city: a road grid with lanes, parking lanes, intersections with rounded
corners, blocks of buildings, parks or parking lots, and street furniture, all in metres (SPEC §1: the clips and
side information the synthetic generator produces natively; CarlaSC-like towns).

Everything lives in a *map frame* whose origin is the ego's intersection, with the ego's road running along +x
and the crossing road along y. Roads never move; a world pose is the map pose composed with a random rigid
transform drawn per clip (see synth_city). Each block draws its furniture from its own generator keyed by
(world key, block id), so a block is identical whichever window asks for it and at every grid resolution: the
rasteriser furnishes only the blocks that reach its window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dcgen.data.classes import CLASS_IDS

BUILDING, BARRIER, OTHER = CLASS_IDS["building"], CLASS_IDS["barrier"], CLASS_IDS["other"]
POLE, ROAD, GROUND = CLASS_IDS["pole"], CLASS_IDS["road"], CLASS_IDS["ground"]
SIDEWALK, VEGETATION, VEHICLE = CLASS_IDS["sidewalk"], CLASS_IDS["vegetation"], CLASS_IDS["vehicle"]

BLOCK_KINDS = ("buildings", "park", "parking")


def _check_range(name: str, value: tuple[float, float], low: float = 0.0) -> None:
    if len(value) != 2 or not (low <= value[0] <= value[1]):
        raise ValueError(f"CityConfig.{name} must be (min, max) with {low} <= min <= max, got {value}")


@dataclass(frozen=True)
class CityConfig:
    """The few numbers that shape a town; metres unless named otherwise."""

    half_size: float = 160.0  # the road grid covers [-half_size, half_size]^2 around the ego's intersection
    block_length: tuple[float, float] = (45.0, 95.0)  # centre-line distance between parallel roads
    lane_width: tuple[float, float] = (3.2, 3.7)
    p_two_lanes: float = 0.4  # chance a road has two lanes per direction instead of one
    parking_width: float = 2.4
    p_parking_lanes: float = 0.7  # chance the town's roads have kerbside parking lanes
    corner_radius: tuple[float, float] = (3.0, 6.0)
    sidewalk_width: tuple[float, float] = (2.0, 4.0)
    crosswalk_width: float = 3.0
    block_mix: tuple[float, float, float] = (0.6, 0.25, 0.15)  # buildings, park, parking lot
    building_height: tuple[float, float] = (4.0, 28.0)

    def __post_init__(self):
        for name in ("block_length", "lane_width", "corner_radius", "sidewalk_width", "building_height"):
            _check_range(name, getattr(self, name))
        if self.block_length[0] < 40.0:
            raise ValueError(f"CityConfig.block_length minimum must be >= 40 m (room for two roads and a block), "
                             f"got {self.block_length[0]}")
        if self.half_size < 100.0:
            raise ValueError(f"CityConfig.half_size must be >= 100 m to cover the largest grid, got {self.half_size}")
        if len(self.block_mix) != 3 or min(self.block_mix) < 0 or sum(self.block_mix) <= 0:
            raise ValueError(f"CityConfig.block_mix must be three non-negative weights (buildings, park, parking) "
                             f"with a positive sum, got {self.block_mix}")
        for name in ("p_two_lanes", "p_parking_lanes"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CityConfig.{name} must be a probability in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Road:
    """A straight road across the town. ``axis`` 0 runs along x at y = ``offset``; axis 1 along y at x = offset."""

    axis: int
    offset: float
    lanes: int  # per direction
    half_width: float  # centre line to kerb, parking lane included


@dataclass(frozen=True)
class Block:
    """The land between four roads, bounded by the kerb; corners rounded by the town's corner radius."""

    id: int
    x0: float
    x1: float
    y0: float
    y1: float
    kind: str
    sidewalk: float


@dataclass(frozen=True)
class CityPlan:
    key: int  # world key: every block, road and intersection generator derives from it
    lane_width: float
    parking_width: float  # 0 when the town has no parking lanes
    corner_radius: float
    crosswalk_width: float
    x_roads: tuple[Road, ...]  # axis 0, sorted by offset; the ego's road has offset 0
    y_roads: tuple[Road, ...]  # axis 1, sorted by offset; the ego's crossing road has offset 0
    blocks: tuple[Block, ...]

    def roads(self, axis: int) -> tuple[Road, ...]:
        return self.x_roads if axis == 0 else self.y_roads

    def road_at(self, axis: int, offset: float) -> Road:
        return next(r for r in self.roads(axis) if r.offset == offset)

    def lane_offset(self, road: Road, direction: int, k: int) -> float:
        """Lateral coordinate of lane ``k`` (0 = next to the centre line) for traffic moving ``direction`` (+1/-1)
        along the road; traffic keeps right."""
        side = -direction if road.axis == 0 else direction
        return road.offset + side * (k + 0.5) * self.lane_width

    def stop_distance(self, crossing: Road) -> float:
        """Distance from a crossing road's centre line to the front of a car waiting at its stop line."""
        return crossing.half_width + self.crosswalk_width + 1.0


def _road_offsets(rng: np.random.Generator, cfg: CityConfig) -> list[float]:
    out = [0.0]
    for sign in (1.0, -1.0):
        pos = 0.0
        while abs(pos) < cfg.half_size + cfg.block_length[1]:
            pos += sign * rng.uniform(*cfg.block_length)
            out.append(pos)
    return sorted(out)


def plan_city(rng: np.random.Generator, cfg: CityConfig) -> CityPlan:
    """Draw the road grid, the town-wide dimensions and every block's kind (not its furniture)."""
    key = int(rng.integers(0, 2**62))
    lane_width = float(rng.uniform(*cfg.lane_width))
    parking = cfg.parking_width if rng.random() < cfg.p_parking_lanes else 0.0
    corner = float(rng.uniform(*cfg.corner_radius))
    roads = []
    for axis in (0, 1):
        offsets = _road_offsets(rng, cfg)
        lanes = 1 + (rng.random(len(offsets)) < cfg.p_two_lanes)
        roads.append(tuple(Road(axis, float(o), int(n), float(n * lane_width + parking))
                           for o, n in zip(offsets, lanes)))
    x_roads, y_roads = roads
    weights = np.asarray(cfg.block_mix, dtype=np.float64) / sum(cfg.block_mix)
    blocks = []
    for i in range(len(y_roads) - 1):
        for j in range(len(x_roads) - 1):
            west, east, south, north = y_roads[i], y_roads[i + 1], x_roads[j], x_roads[j + 1]
            kind = BLOCK_KINDS[int(rng.choice(3, p=weights))]
            blocks.append(Block(id=i * len(x_roads) + j,
                                x0=west.offset + west.half_width, x1=east.offset - east.half_width,
                                y0=south.offset + south.half_width, y1=north.offset - north.half_width,
                                kind=kind, sidewalk=float(rng.uniform(*cfg.sidewalk_width))))
    return CityPlan(key, lane_width, parking, corner, cfg.crosswalk_width, x_roads, y_roads, tuple(blocks))


# ---- scenery: what the rasteriser paints --------------------------------------------------------------------


@dataclass
class Scenery:
    """Paintable primitives in map metres, in painting order.

    surfaces: (x0, x1, y0, y1, corner_radius, class, class_outside_corners) rounded rectangles of ground cover.
    boxes: (x0, x1, y0, y1, class, bottom, top) axis-aligned solids; bottom <= 0 means standing on the ground,
    replacing the ground cover beneath. crowns: (cx, cy, radius, bottom, top) tree canopies (vegetation).
    """

    surfaces: list[tuple] = field(default_factory=list)
    boxes: list[tuple] = field(default_factory=list)
    crowns: list[tuple] = field(default_factory=list)

    def extend(self, other: "Scenery") -> None:
        self.surfaces += other.surfaces
        self.boxes += other.boxes
        self.crowns += other.crowns


@dataclass(frozen=True)
class Edge:
    """One straight side of a block: ``a`` runs along it from the end of one rounded corner, ``n`` points into the
    block from the kerb (negative ``n`` is the road's parking lane)."""

    ox: float
    oy: float
    ax: float  # unit vector along the edge
    ay: float
    nx: float  # unit normal into the block
    ny: float
    length: float  # of the straight kerb between the two rounded corners

    def rect(self, a0: float, a1: float, n0: float, n1: float) -> tuple[float, float, float, float]:
        """The axis-aligned map rectangle covering edge coordinates [a0, a1] x [n0, n1]."""
        xs = (self.ox + a0 * self.ax + n0 * self.nx, self.ox + a1 * self.ax + n1 * self.nx)
        ys = (self.oy + a0 * self.ay + n0 * self.ny, self.oy + a1 * self.ay + n1 * self.ny)
        return min(xs), max(xs), min(ys), max(ys)

    def point(self, a: float, n: float) -> tuple[float, float]:
        return self.ox + a * self.ax + n * self.nx, self.oy + a * self.ay + n * self.ny


def block_edges(block: Block, corner: float) -> tuple[Edge, ...]:
    r = corner
    return (
        Edge(block.x0 + r, block.y0, 1.0, 0.0, 0.0, 1.0, block.x1 - block.x0 - 2 * r),  # south
        Edge(block.x0 + r, block.y1, 1.0, 0.0, 0.0, -1.0, block.x1 - block.x0 - 2 * r),  # north
        Edge(block.x0, block.y0 + r, 0.0, 1.0, 1.0, 0.0, block.y1 - block.y0 - 2 * r),  # west
        Edge(block.x1, block.y0 + r, 0.0, 1.0, -1.0, 0.0, block.y1 - block.y0 - 2 * r),  # east
    )


def block_rng(plan: CityPlan, block: Block, stream: int) -> np.random.Generator:
    return np.random.default_rng([plan.key, stream, block.id])


def _tree(out: Scenery, rng: np.random.Generator, x: float, y: float, scale: float = 1.0) -> None:
    crown_bottom = rng.uniform(2.0, 3.2)
    out.boxes.append((x - 0.2, x + 0.2, y - 0.2, y + 0.2, VEGETATION, 0.0, crown_bottom + 0.5))
    out.crowns.append((x, y, scale * rng.uniform(1.5, 2.8), crown_bottom, crown_bottom + scale * rng.uniform(2.5, 5.5)))


def car_dims(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 3]`` (length, width, height) of parked or moving vehicles: mostly cars, about one in eight a van."""
    van = rng.random(n) < 0.12
    car = rng.uniform((3.9, 1.7, 1.4), (5.0, 2.0, 1.7), size=(n, 3))
    big = rng.uniform((5.4, 1.9, 2.1), (6.8, 2.2, 2.7), size=(n, 3))
    return np.where(van[:, None], big, car)


def _sidewalk_furniture(plan: CityPlan, block: Block, edge: Edge, rng: np.random.Generator, trees: bool,
                        out: Scenery) -> None:
    sw, length = block.sidewalk, edge.length
    if length <= 2.0:
        return
    kerb = 0.6  # furniture stands this far in from the kerb line
    taken = []
    if trees:
        a = rng.uniform(2.0, 6.0)
        while a < length - 2.0:
            _tree(out, rng, *edge.point(a, kerb + 0.2))
            taken.append(a)
            a += rng.uniform(7.0, 12.0)
    a = rng.uniform(3.0, 12.0)
    while a < length - 3.0:
        if all(abs(a - t) > 1.5 for t in taken):
            out.boxes.append((*edge.rect(a - 0.15, a + 0.15, kerb - 0.15, kerb + 0.15), POLE, 0.0,
                              rng.uniform(5.0, 8.0)))
        a += rng.uniform(18.0, 30.0)
    for a in (0.8, length - 0.8):  # traffic-light poles where the kerb turns into the corner
        if rng.random() < 0.6:
            out.boxes.append((*edge.rect(a - 0.18, a + 0.18, kerb - 0.18, kerb + 0.18), POLE, 0.0,
                              rng.uniform(5.5, 6.5)))
    if rng.random() < 0.25:
        a0 = rng.uniform(2.0, max(2.5, length - 12.0))
        out.boxes.append((*edge.rect(a0, min(a0 + rng.uniform(3.0, 12.0), length - 1.0), 0.2, 0.5), BARRIER, 0.0,
                          rng.uniform(0.8, 1.1)))
    for _ in range(rng.poisson(length / 25.0)):
        a, w, d = rng.uniform(1.0, length - 1.0), rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.2)
        out.boxes.append((*edge.rect(a - w / 2, a + w / 2, sw - 0.4 - d, sw - 0.4), OTHER, 0.0, rng.uniform(0.6, 1.4)))
    if plan.parking_width > 0:
        _parked_row(plan, edge, rng, out)


def _parked_row(plan: CityPlan, edge: Edge, rng: np.random.Generator, out: Scenery) -> None:
    """Cars along the kerb in the parking lane, clear of the intersections (room for turns and crosswalks)."""
    occupancy = rng.uniform(0.1, 0.9)
    clear = plan.crosswalk_width + 4.0
    a = clear + rng.uniform(0.0, 4.0)
    lane_mid = -plan.parking_width / 2
    for length, width, height in car_dims(rng, int(edge.length / 4.5) + 1):
        if a + length > edge.length - clear:
            break
        if rng.random() < occupancy:
            out.boxes.append((*edge.rect(a, a + length, lane_mid - width / 2, lane_mid + width / 2), VEHICLE,
                              0.15, 0.15 + height))
        a += length + rng.uniform(0.8, 3.0)


def _buildings(block: Block, edges: tuple[Edge, ...], corner: float, rng: np.random.Generator, cfg: CityConfig,
               out: Scenery) -> None:
    setback = 0.0 if rng.random() < 0.4 else rng.uniform(0.5, 3.0)
    style = rng.uniform(*cfg.building_height)
    inner = (block.x1 - block.x0 - 2 * block.sidewalk, block.y1 - block.y0 - 2 * block.sidewalk)
    front = block.sidewalk + setback
    for k, edge in enumerate(edges):
        span = inner[1] if k >= 2 else inner[0]  # depth available across the block
        a_end = edge.length + corner - front
        a = -corner + front + rng.uniform(0.0, 3.0)
        while a < a_end - 4.0:
            width = min(rng.uniform(8.0, 24.0), a_end - a)
            depth = min(rng.uniform(8.0, 18.0), span / 2 - setback - 1.0)
            if depth > 3.0:
                height = float(np.clip(style * rng.uniform(0.7, 1.3), 3.5, 60.0))
                out.boxes.append((*edge.rect(a, a + width, front, front + depth), BUILDING, 0.0, height))
            a += width + (0.0 if rng.random() < 0.5 else rng.uniform(1.5, 6.0))
        if setback >= 1.0 and rng.random() < 0.35:
            out.boxes.append((*edge.rect(front - corner, a_end - 0.5, block.sidewalk + 0.1, block.sidewalk + 0.9),
                              VEGETATION, 0.0, rng.uniform(0.6, 1.3)))
    cx, cy = (block.x0 + block.x1) / 2, (block.y0 + block.y1) / 2
    for _ in range(rng.integers(0, 3)):
        _tree(out, rng, cx + rng.uniform(-4, 4), cy + rng.uniform(-4, 4))


def _park(block: Block, rng: np.random.Generator, out: Scenery) -> None:
    x0, x1 = block.x0 + block.sidewalk + 1.5, block.x1 - block.sidewalk - 1.5
    y0, y1 = block.y0 + block.sidewalk + 1.5, block.y1 - block.sidewalk - 1.5
    if x1 - x0 < 4 or y1 - y0 < 4:
        return
    area = (x1 - x0) * (y1 - y0)
    along_x = rng.random() < 0.5
    mid = rng.uniform(y0 + 2, y1 - 2) if along_x else rng.uniform(x0 + 2, x1 - 2)
    half = rng.uniform(0.8, 1.5)
    path = (x0 - 1.5, x1 + 1.5, mid - half, mid + half) if along_x else (mid - half, mid + half, y0 - 1.5, y1 + 1.5)
    out.surfaces.append((*path, 0.0, SIDEWALK, SIDEWALK))
    for _ in range(rng.poisson(area / 140.0)):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if abs((y if along_x else x) - mid) > half + 2.5:
            _tree(out, rng, x, y, scale=rng.uniform(1.0, 1.4))
    for _ in range(rng.poisson(area / 220.0)):
        x, y, w, d = rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0)
        if abs((y if along_x else x) - mid) > half + max(w, d):
            out.boxes.append((x - w / 2, x + w / 2, y - d / 2, y + d / 2, VEGETATION, 0.0, rng.uniform(0.5, 1.5)))
    lo, hi = (x0, x1) if along_x else (y0, y1)
    for s in np.arange(lo + rng.uniform(2, 8), hi, 16.0):
        side = mid + (half + 0.5) * (1 if rng.random() < 0.5 else -1)
        x, y = (s, side) if along_x else (side, s)
        out.boxes.append((x - 0.15, x + 0.15, y - 0.15, y + 0.15, POLE, 0.0, rng.uniform(4.0, 5.5)))
        if rng.random() < 0.5:
            bx, by = (s + 3.0, side) if along_x else (side, s + 3.0)
            w, d = (1.6, 0.6) if along_x else (0.6, 1.6)
            out.boxes.append((bx - w / 2, bx + w / 2, by - d / 2, by + d / 2, OTHER, 0.0, 0.8))


def _parking_lot(block: Block, rng: np.random.Generator, out: Scenery) -> None:
    x0, x1 = block.x0 + block.sidewalk, block.x1 - block.sidewalk
    y0, y1 = block.y0 + block.sidewalk, block.y1 - block.sidewalk
    if x1 - x0 < 8 or y1 - y0 < 8:
        return
    gate = rng.integers(0, 4)
    fence = [(x0, x1, y0, y0 + 0.25), (x0, x1, y1 - 0.25, y1), (x0, x0 + 0.25, y0, y1), (x1 - 0.25, x1, y0, y1)]
    for k, (a, b, c, d) in enumerate(fence):
        if rng.random() < 0.7:
            if k == gate and k < 2:
                m = (a + b) / 2
                out.boxes += [(a, m - 3.5, c, d, BARRIER, 0.0, 1.2), (m + 3.5, b, c, d, BARRIER, 0.0, 1.2)]
            elif k == gate:
                m = (c + d) / 2
                out.boxes += [(a, b, c, m - 3.5, BARRIER, 0.0, 1.2), (a, b, m + 3.5, d, BARRIER, 0.0, 1.2)]
            else:
                out.boxes.append((a, b, c, d, BARRIER, 0.0, 1.2))
    occupancy = rng.uniform(0.3, 0.9)
    dims = iter(car_dims(rng, int((x1 - x0) * (y1 - y0) / 10.0) + 1))
    y = y0 + 1.0
    facing_up = True
    while y + 5.2 < y1 - 1.0:
        x = x0 + 1.0
        while x + 2.6 < x1 - 1.0:
            if rng.random() < occupancy:
                length, width, height = next(dims)
                length = min(length, 5.0)
                cy = y + 2.6
                out.boxes.append((x + 1.3 - width / 2, x + 1.3 + width / 2, cy - length / 2, cy + length / 2,
                                  VEHICLE, 0.15, 0.15 + height))
            x += 2.6
        y += 5.2 if facing_up else 5.2 + 6.5  # back-to-back rows, then an aisle
        facing_up = not facing_up
    bx, by = (x0 + 1.5, y1 - 3.5) if rng.random() < 0.5 else (x1 - 3.5, y0 + 1.5)
    out.boxes.append((bx, bx + 2.0, by, by + 2.0, OTHER, 0.0, 2.5))


def furnish(plan: CityPlan, block: Block, cfg: CityConfig) -> Scenery:
    """Ground cover and every static object of one block, drawn from the block's own generator."""
    rng = block_rng(plan, block, 1)
    r, sw = plan.corner_radius, block.sidewalk
    out = Scenery()
    inner_class = ROAD if block.kind == "parking" else GROUND
    out.surfaces.append((block.x0, block.x1, block.y0, block.y1, r, SIDEWALK, ROAD))
    out.surfaces.append((block.x0 + sw, block.x1 - sw, block.y0 + sw, block.y1 - sw, max(r - sw, 0.5), inner_class,
                         SIDEWALK))
    edges = block_edges(block, r)
    street_trees = rng.random() < 0.6
    for edge in edges:
        _sidewalk_furniture(plan, block, edge, rng, street_trees, out)
    if block.kind == "buildings":
        _buildings(block, edges, r, rng, cfg, out)
    elif block.kind == "park":
        _park(block, rng, out)
    else:
        _parking_lot(block, rng, out)
    return out


def blocks_in(plan: CityPlan, x0: float, x1: float, y0: float, y1: float) -> list[Block]:
    return [b for b in plan.blocks if b.x1 > x0 and b.x0 < x1 and b.y1 > y0 and b.y0 < y1]
