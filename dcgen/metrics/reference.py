"""Reference statistics of the real data (SPEC §4): the real clips' 2D and 3D features, class probabilities, means
and covariances under one features checkpoint, computed once and stored in an ``.npz`` so evaluations and the
synthesis job's quality gates don't recompute them.

The file holds plain arrays only (loaded with ``allow_pickle=False``): ``feat2d``, ``probs2d``, ``feat3d``,
``probs3d`` (rows as ``extract.ClipFeatures``), ``mean2d``/``cov2d``/``num2d`` and ``mean3d``/``cov3d``/``num3d``
(float64 ``FeatureStats``), ``feature_checkpoint_id`` and a JSON ``meta`` string (data path, split, clip count,
the features checkpoint path, creation time). A reference is tied to its features checkpoint: ``check_network``
refuses to compare it with features of any other network, whose numbers would mean nothing against it.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcgen.metrics.extract import ClipFeatures
from dcgen.metrics.feature_stats import FeatureStats

FORMAT = "dcgen-reference"
FORMAT_VERSION = 1
MIN_CLIPS = 4  # the k-NN precision/recall (k = 3) needs k + 1 samples per set
ARRAYS = ("feat2d", "probs2d", "feat3d", "probs3d", "mean2d", "cov2d", "num2d", "mean3d", "cov3d", "num3d",
          "views_per_clip", "feature_checkpoint_id", "meta", "format", "format_version")


def check_enough_clips(num_clips: int, what: str) -> None:
    if num_clips < MIN_CLIPS:
        raise ValueError(f"{what}: {num_clips} clips; at least {MIN_CLIPS} are needed (covariances and the k-NN "
                         f"precision/recall with k = 3 need k + 1 samples per set)")


@dataclass(frozen=True)
class ReferenceStats:
    features: ClipFeatures
    stats2d: FeatureStats
    stats3d: FeatureStats
    feature_checkpoint_id: str
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: ClipFeatures, feature_checkpoint_id: str, meta: dict | None = None,
                      what: str = "real clips") -> "ReferenceStats":
        check_enough_clips(features.num_clips, what)
        stats2d = FeatureStats.from_features(features.feat2d_MD, f"{what} 2D features")
        stats3d = FeatureStats.from_features(features.feat3d_ND, f"{what} 3D features")
        return cls(features, stats2d, stats3d, feature_checkpoint_id, dict(meta or {}))

    @property
    def num_clips(self) -> int:
        return self.features.num_clips

    def check_network(self, checkpoint_id: str, what: str = "these features") -> None:
        """Raise unless the reference was made with the features checkpoint ``checkpoint_id``."""
        if checkpoint_id != self.feature_checkpoint_id:
            source = self.meta.get("features", "?")
            raise ValueError(f"the reference was made with feature network {self.feature_checkpoint_id!r} "
                             f"({source}) but {what} come from {checkpoint_id!r}; make the reference again with "
                             "'dcgen eval reference --features' of the same checkpoint")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = self.features
        np.savez(path, feat2d=f.feat2d_MD, probs2d=f.probs2d_MK, feat3d=f.feat3d_ND, probs3d=f.probs3d_NK,
                 views_per_clip=np.int64(f.views_per_clip),
                 mean2d=self.stats2d.mean_D, cov2d=self.stats2d.cov_DD, num2d=np.int64(self.stats2d.num_samples),
                 mean3d=self.stats3d.mean_D, cov3d=self.stats3d.cov_DD, num3d=np.int64(self.stats3d.num_samples),
                 feature_checkpoint_id=np.str_(self.feature_checkpoint_id),
                 meta=np.str_(json.dumps(self.meta, sort_keys=True)), format=np.str_(FORMAT),
                 format_version=np.int64(FORMAT_VERSION))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ReferenceStats":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"reference statistics file {str(path)!r} does not exist")
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as e:  # zipfile / format errors
            raise ValueError(f"{path}: not an .npz file ({type(e).__name__}); expected reference statistics "
                             "written by 'dcgen eval reference'") from e
        with data:
            if "format" not in data.files or str(data["format"]) != FORMAT:
                raise ValueError(f"{path}: not a dcgen reference statistics file (arrays: "
                                 f"{', '.join(data.files[:6]) or 'none'}); expected one written by "
                                 "'dcgen eval reference'")
            if int(data["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"{path}: reference format version {int(data['format_version'])}, this dcgen "
                                 f"reads version {FORMAT_VERSION}")
            missing = [k for k in ARRAYS if k not in data.files]
            if missing:
                raise ValueError(f"{path}: reference statistics file lacks arrays {missing}")
            features = ClipFeatures(data["feat2d"], data["probs2d"], data["feat3d"], data["probs3d"],
                                    int(data["views_per_clip"]))
            stats2d = FeatureStats(data["mean2d"], data["cov2d"], int(data["num2d"]))
            stats3d = FeatureStats(data["mean3d"], data["cov3d"], int(data["num3d"]))
            ref = cls(features, stats2d, stats3d, str(data["feature_checkpoint_id"]), json.loads(str(data["meta"])))
        for space, stats, feats in (("2D", stats2d, features.feat2d_MD), ("3D", stats3d, features.feat3d_ND)):
            if stats.num_samples != feats.shape[0] or stats.dim != feats.shape[1]:
                raise ValueError(f"{path}: {space} statistics describe {stats.num_samples} × {stats.dim} features "
                                 f"but the file holds {feats.shape[0]} × {feats.shape[1]}; the file is damaged")
        return ref


def make_reference(data: str, features: str, out: str | Path | None = None, *, split: str | None = None,
                   batch_size: int = 16, device: str = "auto",
                   max_clips: int | None = None) -> tuple[ReferenceStats, dict]:
    """Reference statistics of the store ``data`` (one split, or every complete clip) under the features
    checkpoint ``features``; written to ``out`` when given. Returns the reference and a JSON-able summary."""
    from dcgen.metrics.extract import extract_store
    from dcgen.metrics.feature_nets import load_feature_nets
    from dcgen.runtime import pick_device

    loaded = load_feature_nets(features, pick_device(device))
    feats, info = extract_store(loaded.nets, data, split, batch_size, max_clips)
    meta = {"data": str(data), "split": split, "num_clips": feats.num_clips, "num_images": feats.num_images,
            "indices_sha1": info["indices_sha1"], "features": str(features),
            "image_kind": loaded.config.image_kind, "dims": list(loaded.nets.dims),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    ref = ReferenceStats.from_features(feats, loaded.checkpoint_id, meta, what=f"{data}")
    summary = {**meta, "feature_checkpoint_id": loaded.checkpoint_id, "seconds": info["seconds"],
               "clips_per_second": info["clips_per_second"], "out": None}
    if out is not None:
        summary["out"] = str(ref.save(out))
    return ref, summary
