"""The moving half of the synthetic city: the ego's drive and everyone else's (SPEC §1, trajectory and command).

The ego follows a lane of the map frame's x road towards the intersection at the origin and, by its command,
waits at a red light (static), drives straight on (forward), or turns left or right on a circular arc into the
crossing road's lane; the arcs are tangent to both lanes and, for right turns, concentric with the kerb's
rounded corner, so the ego never leaves the road. derive.command_from_trajectory then reads back exactly the
intended command. One road axis has green: its lanes carry moving traffic through the intersections; the other
axis has red: its cars queue at stop lines or move only mid-block, and pedestrians cross it on the crosswalks.
Vehicles, pedestrians and the ego are oriented boxes moving at constant velocity; candidates that would collide
with the ego or with the car ahead in their lane are dropped, so the streets look orderly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcgen.data.classes import CLASS_IDS
from dcgen.data.synth_world import CityPlan, Road, block_edges, block_rng, blocks_in, car_dims

VEHICLE, PEDESTRIAN = CLASS_IDS["vehicle"], CLASS_IDS["pedestrian"]
EGO_LENGTH, EGO_WIDTH = 4.6, 2.0
QUEUE_SPACING = 7.0  # metres between the fronts of cars waiting at a light


@dataclass(frozen=True)
class TrafficConfig:
    """Speeds in m/s, distances in metres."""

    vehicle_speed: tuple[float, float] = (4.0, 11.0)
    vehicle_gap: tuple[float, float] = (10.0, 60.0)  # bumper to bumper along a lane
    p_empty_lane: float = 0.3
    pedestrian_spacing: float = 12.0  # metres of sidewalk per pedestrian, on average
    pedestrian_speed: tuple[float, float] = (0.8, 1.6)
    ego_speed_forward: tuple[float, float] = (3.0, 12.0)
    ego_speed_turn: tuple[float, float] = (3.0, 6.5)

    def __post_init__(self):
        for name in ("vehicle_speed", "vehicle_gap", "pedestrian_speed", "ego_speed_forward", "ego_speed_turn"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"TrafficConfig.{name} must be (min, max) with 0 < min <= max, got {(lo, hi)}")
        if not 0.0 <= self.p_empty_lane <= 1.0:
            raise ValueError(f"TrafficConfig.p_empty_lane must be in [0, 1], got {self.p_empty_lane}")
        if self.pedestrian_spacing <= 0:
            raise ValueError(f"TrafficConfig.pedestrian_spacing must be > 0, got {self.pedestrian_spacing}")


@dataclass(frozen=True)
class EgoPath:
    """The ego's centre line: straight along y = ``lane_y`` until x = ``cx`` then, for turns, a quarter circle of
    ``radius`` around (cx, cy) and straight on along the crossing road. ``s`` is the arc length from x = cx."""

    command: int  # intended: 0 static, 1 forward, 2 left, 3 right
    lane_y: float
    cx: float
    cy: float
    radius: float
    s0: float
    speed: float
    accel: float

    def poses(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map-frame (x, y, yaw) at ``times`` seconds."""
        s = self.s0 + self.speed * times + 0.5 * self.accel * times**2
        if self.command in (0, 1):
            return s.astype(np.float64), np.full_like(s, self.lane_y), np.zeros_like(s)
        sign = 1.0 if self.command == 2 else -1.0
        r, quarter = self.radius, 0.5 * np.pi * self.radius
        theta = np.clip(s, 0.0, quarter) / r
        x = np.where(s < 0, self.cx + s, self.cx + r * np.sin(theta))
        y = np.where(s < 0, self.lane_y, self.cy - sign * r * np.cos(theta))
        beyond = np.maximum(s - quarter, 0.0)
        y = y + sign * beyond
        return x, y, sign * theta


def plan_ego(rng: np.random.Generator, plan: CityPlan, command: int, duration: float,
             cfg: TrafficConfig) -> EgoPath:
    """The ego's path for ``command`` on the map frame's x road, approaching the intersection at the origin."""
    road, cross = plan.road_at(0, 0.0), plan.road_at(1, 0.0)
    w = plan.lane_width
    lane = int(rng.integers(0, road.lanes))
    if command == 0:
        queue_slot = int(rng.integers(0, 3))
        front = -plan.stop_distance(cross) - QUEUE_SPACING * queue_slot
        return EgoPath(0, plan.lane_offset(road, 1, lane), 0.0, 0.0, 0.0, front - EGO_LENGTH / 2, 0.0, 0.0)
    if command == 1:
        speed = rng.uniform(*cfg.ego_speed_forward)
        accel = rng.uniform(-1.0, 1.0)
        if duration > 0:  # never slow below 1 m/s within the clip
            accel = max(accel, (1.0 - speed) / duration)
        return EgoPath(1, plan.lane_offset(road, 1, lane), 0.0, 0.0, 0.0, rng.uniform(-45.0, 5.0), speed, accel)
    speed = rng.uniform(*cfg.ego_speed_turn)
    lead_in = rng.uniform(0.0, 0.5)  # fraction of the clip driven before the arc begins
    if command == 2:  # from the inner lane to the crossing road's inner lane heading +y
        y_in, x_out = plan.lane_offset(road, 1, 0), plan.lane_offset(cross, 1, 0)
        radius = max(road.half_width, cross.half_width) + 0.5 * w + rng.uniform(0.0, 1.5)
        cy = y_in + radius
    else:  # from the kerb lane, around the corner's kerb, into the crossing road's kerb lane heading -y
        y_in, x_out = plan.lane_offset(road, 1, road.lanes - 1), plan.lane_offset(cross, -1, cross.lanes - 1)
        radius = plan.corner_radius + plan.parking_width + 0.5 * w
        cy = y_in - radius
    return EgoPath(command, y_in, x_out - radius, cy, radius, -lead_in * speed * duration, speed, 0.0)


# ---- other road users ---------------------------------------------------------------------------------------


@dataclass
class Actors:
    """Oriented boxes moving at constant velocity, map frame. All fields are [N] arrays."""

    cls: np.ndarray
    x: np.ndarray  # centre at t = 0
    y: np.ndarray
    hx: np.ndarray  # unit heading
    hy: np.ndarray
    speed: np.ndarray
    length: np.ndarray
    width: np.ndarray
    bottom: np.ndarray
    top: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[tuple]) -> "Actors":
        cols = np.asarray(rows, dtype=np.float64).reshape(-1, 10).T
        return cls(cols[0].astype(np.uint8), *cols[1:])

    def take(self, keep: np.ndarray) -> "Actors":
        return Actors(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return int(self.cls.size)

    def positions(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centres at ``times``: two [T, N] arrays."""
        d = times[:, None] * self.speed[None, :]
        return self.x[None] + d * self.hx[None], self.y[None] + d * self.hy[None]


def boxes_overlap(ax, ay, ahx, ahy, al, aw, bx, by, bhx, bhy, bl, bw) -> np.ndarray:
    """Separating-axis test of two sets of oriented rectangles (centre, unit heading, length, width); broadcasts."""
    dx, dy = bx - ax, by - ay
    separated = False
    for nx, ny in ((ahx, ahy), (-ahy, ahx), (bhx, bhy), (-bhy, bhx)):
        ra = 0.5 * al * np.abs(ahx * nx + ahy * ny) + 0.5 * aw * np.abs(-ahy * nx + ahx * ny)
        rb = 0.5 * bl * np.abs(bhx * nx + bhy * ny) + 0.5 * bw * np.abs(-bhy * nx + bhx * ny)
        separated = separated | (np.abs(dx * nx + dy * ny) > ra + rb)
    return ~separated


def _lane_vehicles(plan: CityPlan, road: Road, green: bool, cfg: TrafficConfig, horizon: float,
                   lo: float, hi: float) -> list[tuple]:
    """Cars on every lane of ``road`` whose drive over ``horizon`` seconds comes near along-road span [lo, hi].

    Each lane is filled end to end from the road's own generator (so it does not depend on the window), then
    culled; on a red road, moving cars that would pass a stop line are dropped and queues wait at each one.
    """
    rng = np.random.default_rng([plan.key, 2, road.axis, int(round(road.offset * 10)) & 0xFFFFFFF])
    crossings = np.array([c.offset for c in plan.roads(1 - road.axis)])
    stops = np.array([plan.stop_distance(c) for c in plan.roads(1 - road.axis)])
    span = plan_span(plan)
    n = int(2 * span / (cfg.vehicle_gap[0] + 3.9)) + 2
    rows = []
    for direction in (1, -1):
        for k in range(road.lanes):
            lateral = plan.lane_offset(road, direction, k)
            empty = rng.random() < cfg.p_empty_lane
            lane_speed = rng.uniform(*cfg.vehicle_speed)
            dims = car_dims(rng, n)
            gaps = rng.uniform(*cfg.vehicle_gap, size=n)
            speed = lane_speed + rng.uniform(-0.5, 0.5, size=n)
            rear = -span + rng.uniform(0.0, 20.0) + np.concatenate([[0.0], np.cumsum(dims[:-1, 0] + gaps[:-1])])
            queues = rng.integers(0, 3, size=crossings.size)
            queue_dims = car_dims(rng, 3 * crossings.size).reshape(crossings.size, 3, 3)
            if empty:
                continue
            centre = rear + dims[:, 0] / 2
            end = centre + direction * speed * horizon
            keep = (np.maximum(centre, end) + 10 > lo) & (np.minimum(centre, end) - 10 < hi) & (rear < span)
            if not green:
                a = np.minimum(centre - direction * dims[:, 0] / 2, end + direction * dims[:, 0] / 2)
                b = np.maximum(centre - direction * dims[:, 0] / 2, end + direction * dims[:, 0] / 2)
                red = (a[:, None] < crossings + stops) & (b[:, None] > crossings - stops)
                keep &= ~red.any(axis=1)
            lane = [(centre[i], *dims[i], speed[i]) for i in np.flatnonzero(keep)]
            if not green:  # cars waiting at each red light, the first with its front at the stop line
                for c, stop, q, qd in zip(crossings, stops, queues, queue_dims):
                    for i in range(q):
                        mid = c - direction * (stop + QUEUE_SPACING * i + qd[i, 0] / 2)
                        if lo - 10 < mid < hi + 10:
                            lane.append((mid, *qd[i], 0.0))
            for centre_i, length, width, height, v in _orderly(lane, direction, horizon):
                x, y = (centre_i, lateral) if road.axis == 0 else (lateral, centre_i)
                hx, hy = (direction, 0.0) if road.axis == 0 else (0.0, direction)
                rows.append((VEHICLE, x, y, hx, hy, v, length, width, 0.15, 0.15 + height))
    return rows


def plan_span(plan: CityPlan) -> float:
    return max(abs(plan.x_roads[0].offset), abs(plan.x_roads[-1].offset), abs(plan.y_roads[0].offset),
               abs(plan.y_roads[-1].offset))


def _orderly(lane: list[tuple], direction: int, horizon: float) -> list[tuple]:
    """Keep the queued cars, then each moving car that stays clear of every car kept so far. Speeds are constant,
    so checking the gaps at both ends of the clip and whether the order flips covers the whole clip."""
    if not lane:
        return lane
    queued = [c for c in lane if c[4] == 0.0]
    moving = [c for c in lane if c[4] != 0.0]
    kept = list(queued)
    for car in moving:
        ok = True
        for other in kept:
            for t in (0.0, horizon):
                gap = abs((car[0] + direction * car[4] * t) - (other[0] + direction * other[4] * t))
                if gap < (car[1] + other[1]) / 2 + 1.5:
                    ok = False
            lo, hi = sorted((car[0] - other[0], car[0] + direction * car[4] * horizon
                             - (other[0] + direction * other[4] * horizon)))
            if lo < 0 < hi:  # overtook within the lane
                ok = False
        if ok:
            kept.append(car)
    return kept


def _sidewalk_pedestrians(plan: CityPlan, window: tuple[float, float, float, float], cfg: TrafficConfig) -> list:
    rows = []
    for block in blocks_in(plan, *window):
        rng = block_rng(plan, block, 3)
        for edge in block_edges(block, plan.corner_radius):
            if edge.length <= 1.0:
                continue
            for _ in range(rng.poisson(edge.length / cfg.pedestrian_spacing)):
                a = rng.uniform(0.0, edge.length)
                n = rng.uniform(0.6, max(0.7, block.sidewalk - 0.6))
                sign = 1.0 if rng.random() < 0.5 else -1.0
                speed = 0.0 if rng.random() < 0.15 else rng.uniform(*cfg.pedestrian_speed)
                x, y = edge.point(a, n)
                rows.append(_pedestrian(rng, x, y, sign * edge.ax, sign * edge.ay, speed))
    return rows


def _pedestrian(rng, x, y, hx, hy, speed) -> tuple:
    return (PEDESTRIAN, x, y, hx, hy, speed, 0.6, 0.6, 0.05, 0.05 + rng.uniform(1.55, 1.9))


def _crossing_pedestrians(plan: CityPlan, red_axis: int, window: tuple[float, float, float, float],
                          cfg: TrafficConfig) -> list:
    """Pedestrians on the crosswalks over red roads (green traffic runs parallel to them)."""
    x0, x1, y0, y1 = window
    rows = []
    for i, yr in enumerate(plan.y_roads):
        for j, xr in enumerate(plan.x_roads):
            if not (x0 - 20 < yr.offset < x1 + 20 and y0 - 20 < xr.offset < y1 + 20):
                continue
            rng = np.random.default_rng([plan.key, 4, i, j])
            red, other = (yr, xr) if red_axis == 1 else (xr, yr)
            for side in (1.0, -1.0):
                band = other.offset + side * (other.half_width + plan.crosswalk_width / 2)
                for _ in range(rng.poisson(0.7)):
                    along = red.offset + rng.uniform(-red.half_width - 1.0, red.half_width + 1.0)
                    lateral = band + rng.uniform(-0.8, 0.8)
                    sign = 1.0 if rng.random() < 0.5 else -1.0
                    speed = rng.uniform(*cfg.pedestrian_speed)
                    x, y = (along, lateral) if red.axis == 1 else (lateral, along)
                    hx, hy = (sign, 0.0) if red.axis == 1 else (0.0, sign)
                    rows.append(_pedestrian(rng, x, y, hx, hy, speed))
    return rows


def populate(plan: CityPlan, ego: EgoPath, times: np.ndarray, window: tuple[float, float, float, float],
             cfg: TrafficConfig) -> Actors:
    """Every vehicle and pedestrian that can appear in ``window`` (x0, x1, y0, y1) during ``times``."""
    horizon = float(times[-1]) if times.size else 0.0
    green_axis = 1 if ego.command == 0 else 0
    x0, x1, y0, y1 = window
    rows: list[tuple] = []
    for axis in (0, 1):
        lo, hi = (x0, x1) if axis == 0 else (y0, y1)
        lat_lo, lat_hi = (y0, y1) if axis == 0 else (x0, x1)
        for road in plan.roads(axis):
            if lat_lo - road.half_width < road.offset < lat_hi + road.half_width:
                rows += _lane_vehicles(plan, road, axis == green_axis, cfg, horizon, lo, hi)
    rows += _crossing_pedestrians(plan, 1 - green_axis, window, cfg)
    rows += _sidewalk_pedestrians(plan, window, cfg)
    actors = Actors.from_rows(rows)
    if not len(actors):
        return actors
    ex, ey, eyaw = ego.poses(times)
    px, py = actors.positions(times)
    # keep a headway of 0.8 s (at least 1 m) ahead and behind the ego, 0.5 m beside it
    headway = max(1.0, 0.8 * float(np.hypot(np.diff(ex), np.diff(ey)).sum() / max(horizon, 1e-9)))
    hit = boxes_overlap(ex[:, None], ey[:, None], np.cos(eyaw)[:, None], np.sin(eyaw)[:, None],
                        EGO_LENGTH + 2 * headway, EGO_WIDTH + 1.0, px, py, actors.hx[None], actors.hy[None],
                        actors.length[None], actors.width[None]).any(axis=0)
    inside = ((px.max(0) > x0 - 5) & (px.min(0) < x1 + 5) & (py.max(0) > y0 - 5) & (py.min(0) < y1 + 5))
    return actors.take(~hit & inside)
