"""The pair of metric feature networks of SPEC §4, as one module with its config and checkpoint loading.

``FeatureNets`` holds the 2D image network (``image``: dcgen's ``RenderNet`` CNN, an ``InceptionV3`` trained by
dcgen, or a user's pretrained ``InceptionV3``) and the 3D ``VoxelNet``, plus what ties them to the data: the grid
of the clips, the proxy task they were trained on and the metric renders the image network sees
(``render_for_metrics`` at ``render_size`` pixels, bird's-eye and oblique views of ``render_frames``). The
checkpoint (kind ``features``, ``dcgen.checkpoint`` format) keeps this config beside both state_dicts, so
``load_feature_nets`` rebuilds the exact pair; its ``checkpoint_id`` is what reference statistics are tied to.

Image kinds: ``cnn`` (default, 512-D features, trains on CPU), ``inception`` (InceptionV3 shape trained from
scratch on the renders, 2048-D, for GPUs), ``inception-pretrained`` (a user's local ImageNet weights, frozen,
2048-D features and ImageNet class probabilities, as the standard FID/IS use).
Legend: N clips, V views per clip, T time, X/Y/Z space, S image side.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcgen.data.grid import Grid
from dcgen.metrics.inception import InceptionV3
from dcgen.metrics.proxy_task import ProxyTask
from dcgen.metrics.render_net import RenderNet, RenderNetConfig
from dcgen.metrics.voxel_net import VoxelNet, VoxelNetConfig

KIND = "features"
IMAGE_KINDS = ("cnn", "inception", "inception-pretrained")
DEFAULT_RENDER_SIZE = 128


@dataclass(frozen=True)
class FeatureNetsConfig:
    grid: dict  # Grid.to_dict() of the clips the networks read
    proxy: dict  # ProxyTask.to_dict()
    image_kind: str
    image: dict  # RenderNetConfig.to_dict(), or InceptionV3's {"num_classes" (fc outputs), "fid_variant", "resize_to"}
    voxel: dict  # VoxelNetConfig.to_dict()
    render_size: int = DEFAULT_RENDER_SIZE
    render_frames: tuple[int, ...] | None = None  # None: first, middle and last frame

    def __post_init__(self) -> None:
        if self.image_kind not in IMAGE_KINDS:
            raise ValueError(f"image network {self.image_kind!r} is not one of {', '.join(IMAGE_KINDS)}")
        if self.render_frames is not None:
            object.__setattr__(self, "render_frames", tuple(int(f) for f in self.render_frames))
            t = int(self.grid["num_frames"])
            if not self.render_frames or any(not 0 <= f < t for f in self.render_frames):
                raise ValueError(f"render_frames {list(self.render_frames)} must be a non-empty list of frame "
                                 f"indices in 0..{t - 1}")
        if int(self.render_size) != self.render_size or self.render_size < 32:
            raise ValueError(f"render_size must be an integer >= 32 pixels, got {self.render_size}")

    @property
    def grid_obj(self) -> Grid:
        return Grid.from_dict(self.grid)

    @property
    def proxy_task(self) -> ProxyTask:
        return ProxyTask.from_dict(self.proxy)

    @property
    def frames(self) -> tuple[int, ...]:
        from dcgen.render.metric_views import default_frames

        return self.render_frames if self.render_frames is not None else default_frames(self.grid_obj.num_frames)

    @property
    def views_per_clip(self) -> int:
        return 2 * len(self.frames)

    def to_dict(self) -> dict:
        """Plain JSON types only (lists, not tuples), so it compares equal to its own saved copy."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureNetsConfig":
        from dcgen import config

        return config.from_dict(cls, d)

    @classmethod
    def for_grid(cls, grid: Grid, proxy: ProxyTask, image_kind: str = "cnn", render_size: int = DEFAULT_RENDER_SIZE,
                 render_frames: tuple[int, ...] | None = None, image: dict | None = None,
                 voxel: dict | None = None) -> "FeatureNetsConfig":
        """Default widths for ``grid``; ``image``/``voxel`` override config fields of the two networks."""
        if image_kind == "cnn":
            image_cfg = RenderNetConfig(proxy.num_logits, **(image or {})).to_dict()
        elif image_kind == "inception":
            image_cfg = {"num_classes": proxy.num_logits, "fid_variant": False, "resize_to": None, **(image or {})}
        elif image_kind == "inception-pretrained":
            if image is None or "num_classes" not in image:
                raise ValueError("a pretrained InceptionV3 config needs the weights' num_classes and fid_variant "
                                 "(see load_inception_weights)")
            image_cfg = {"resize_to": 299, **image}
        else:
            raise ValueError(f"image network {image_kind!r} is not one of {', '.join(IMAGE_KINDS)}")
        voxel_cfg = VoxelNetConfig.for_grid(grid.num_frames, grid.size, grid.num_classes, proxy.num_logits,
                                            **(voxel or {})).to_dict()
        return cls(grid.to_dict(), proxy.to_dict(), image_kind, image_cfg, voxel_cfg, render_size, render_frames)


class FeatureNets(nn.Module):
    """The 2D and 3D feature networks; ``check_clips``, ``render`` and ``image_inputs`` turn clips into their
    inputs, ``class_probs`` their logits into p(y|x)."""

    def __init__(self, config: FeatureNetsConfig):
        super().__init__()
        self.config = config
        if config.image_kind == "cnn":
            self.image = RenderNet(RenderNetConfig.from_dict(config.image))
        else:
            self.image = InceptionV3(int(config.image["num_classes"]), bool(config.image.get("fid_variant", False)),
                                     config.image.get("resize_to"))
        self.voxel = VoxelNet(VoxelNetConfig.from_dict(config.voxel))
        self.grid = config.grid_obj
        self.proxy = config.proxy_task

    @property
    def image_trainable(self) -> bool:
        return self.config.image_kind != "inception-pretrained"

    @property
    def dims(self) -> tuple[int, int]:
        """``(2D feature dim, 3D feature dim)``."""
        return self.image.feature_dim, self.voxel.feature_dim

    def class_probs(self, which: str, logits_BL: torch.Tensor) -> np.ndarray:
        """float64 ``[B, K]`` p(y|x) of ``which`` ("image" or "voxel") network's logits: the proxy task's joint
        classes, or ImageNet's for a pretrained InceptionV3."""
        if which == "image" and not self.image_trainable:
            return torch.softmax(logits_BL.double(), dim=1).cpu().numpy()
        return self.proxy.joint_log_probs(logits_BL).exp().cpu().numpy()

    def predict(self, logits_BL: torch.Tensor) -> torch.Tensor:
        """Proxy-task class ids predicted from a trained network's logits."""
        return self.proxy.predict(logits_BL)

    def forward(self, images_B3SS: torch.Tensor | None, occ_BTXYZ: torch.Tensor):
        """``(image outputs or None, voxel outputs)``, each ``(features, logits, aux or None)``: one call for both
        networks, so a DDP wrapper sees (and synchronises) every gradient."""
        image_out = self.image(images_B3SS) if images_B3SS is not None else None
        return image_out, self.voxel(occ_BTXYZ)

    def check_clips(self, occ_NTXYZ, what: str = "clips") -> np.ndarray:
        """``occ`` as a uint8 numpy ``[N, T, X, Y, Z]`` of this grid's shape and class ids; else a ValueError."""
        arr = occ_NTXYZ.cpu().numpy() if isinstance(occ_NTXYZ, torch.Tensor) else np.asarray(occ_NTXYZ)
        want = list(self.grid.shape)
        if arr.ndim != 5 or list(arr.shape[1:]) != want:
            raise ValueError(f"{what} have shape {list(arr.shape)}; the feature networks read clips [N, {want[0]}, "
                             f"{want[1]}, {want[2]}, {want[3]}] (grid T, X, Y, Z)")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{what} hold {arr.dtype}; expected integer class ids")
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi >= self.grid.num_classes:
            raise ValueError(f"{what} hold class id {lo if lo < 0 else hi}; the feature networks read ids "
                             f"0..{self.grid.num_classes - 1}")
        return arr.astype(np.uint8, copy=False)

    def render(self, occ_NTXYZ: np.ndarray, frames: tuple[int, ...] | None = None) -> np.ndarray:
        """``[N, V, S, S, 3]`` uint8 metric views of validated clips (all ``config.frames`` by default)."""
        from dcgen.render.metric_views import render_for_metrics

        return render_for_metrics(occ_NTXYZ, self.config.render_size, frames or self.config.frames)

    @staticmethod
    def image_inputs(views_NVSS3: np.ndarray, device) -> torch.Tensor:
        """``[N V, 3, S, S]`` float images in [-1, 1], clip-major (the views of clip n are rows n V .. n V + V - 1)."""
        n, v, s, _, _ = views_NVSS3.shape
        t = torch.from_numpy(np.ascontiguousarray(views_NVSS3)).to(device)
        return t.view(n * v, s, s, 3).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def build_feature_nets(config: FeatureNetsConfig | dict) -> FeatureNets:
    return FeatureNets(config if isinstance(config, FeatureNetsConfig) else FeatureNetsConfig.from_dict(config))


@dataclass
class LoadedFeatureNets:
    nets: FeatureNets
    meta: dict
    checkpoint_id: str
    path: str

    @property
    def config(self) -> FeatureNetsConfig:
        return self.nets.config


def load_feature_nets(path: str | Path, device: torch.device | str = "cpu") -> LoadedFeatureNets:
    """A trained features checkpoint (kind ``features``) in eval mode on ``device``; clear errors otherwise."""
    from dcgen import checkpoint

    meta, state = checkpoint.load(path, kind=KIND, map_location="cpu")
    try:
        config = FeatureNetsConfig.from_dict(meta["config"])
        nets = FeatureNets(config)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: features checkpoint config is incomplete or from another dcgen ({e})") from e
    for part in ("image", "voxel"):
        if part not in state.get("model", {}):
            raise ValueError(f"{path}: features checkpoint lacks the {part} network's weights")
        try:
            getattr(nets, part).load_state_dict(state["model"][part])
        except RuntimeError as e:
            raise ValueError(f"{path}: the {part} network's weights do not fit its config "
                             f"({str(e).splitlines()[0]})") from e
    nets.to(torch.device(device)).eval()
    return LoadedFeatureNets(nets, meta, checkpoint.checkpoint_id(path), str(path))


def model_state(nets: FeatureNets) -> dict:
    """The checkpoint's ``model`` entry: the two state_dicts, unwrapped."""
    return {"image": nets.image.state_dict(), "voxel": nets.voxel.state_dict()}
