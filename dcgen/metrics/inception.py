"""InceptionV3 in plain torch (SPEC §4: the 2D network is "InceptionV3-shaped"), and the loader for a user's local
pretrained weights file (pretrained weights cannot be downloaded here; torchvision does not import beside this
torch, PLATFORM-NOTES).

The layer names are those of the common InceptionV3 state_dicts (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``), so a torchvision ``inception_v3`` state_dict (1000
ImageNet classes; its ``AuxLogits.*`` are not used) or the FID Inception of pytorch-fid (1008 classes) loads as is.
The FID variant differs in four pooling details (average pools that exclude padding in the A, C and first E
blocks, a max pool in the last E block's pool branch); ``fid_variant`` switches them and the loader turns it on
for 1008-class weights, so features match that reference network. Inputs are images in [-1, 1]; pretrained
networks see them resized to 299² (bilinear), the size they were trained at. The metric feature is the
2048-D average pool after ``Mixed_7c``; ``fc`` gives the class logits.
Legend: B batch, C channels, H/W image, K classes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 2048
PRETRAINED_SIZE = 299
MIN_IMAGE = 75
TORCHVISION_CLASSES = 1000
FID_CLASSES = 1008


class BasicConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor, include_pad: bool) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=include_pad)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int, fid: bool):
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x, not self.fid)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, 2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in: int, c7: int, fid: bool):
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x, not self.fid)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """``pool``: "avg" (torchvision), "avg_no_pad" (FID, Mixed_7b) or "max" (FID, Mixed_7c)."""

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = F.max_pool2d(x, 3, 1, 1)
        else:
            pooled = _avg_pool(x, self.pool == "avg")
        return torch.cat([
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
            torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], 1),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3(nn.Module):
    """Images ``[B, 3, H, W]`` in [-1, 1] -> (features ``[B, 2048]``, logits ``[B, K]``, None).

    ``resize_to`` (e.g. 299 for pretrained weights) resizes inputs bilinearly first; ``None`` keeps their size
    (at least 75 pixels).
    """

    def __init__(self, num_classes: int = TORCHVISION_CLASSES, fid_variant: bool = False,
                 resize_to: int | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"InceptionV3 needs >= 2 classes, got {num_classes}")
        if resize_to is not None and resize_to < MIN_IMAGE:
            raise ValueError(f"InceptionV3 resize_to must be >= {MIN_IMAGE} pixels, got {resize_to}")
        self.num_classes, self.fid_variant, self.resize_to = num_classes, fid_variant, resize_to
        fid = fid_variant
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32, fid)
        self.Mixed_5c = InceptionA(256, 64, fid)
        self.Mixed_5d = InceptionA(288, 64, fid)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, fid)
        self.Mixed_6c = InceptionC(768, 160, fid)
        self.Mixed_6d = InceptionC(768, 160, fid)
        self.Mixed_6e = InceptionC(768, 192, fid)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg_no_pad" if fid else "avg")
        self.Mixed_7c = InceptionE(2048, "max" if fid else "avg")
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM

    def features(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        if images_B3HW.dim() != 4 or images_B3HW.shape[1] != 3:
            raise ValueError(f"InceptionV3 expects images [B, 3, H, W], got {list(images_B3HW.shape)}")
        x = images_B3HW
        if self.resize_to is not None and tuple(x.shape[2:]) != (self.resize_to, self.resize_to):
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        if min(x.shape[2:]) < MIN_IMAGE:
            raise ValueError(f"InceptionV3 needs images of at least {MIN_IMAGE} pixels, got {list(x.shape[2:])}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, images_B3HW: torch.Tensor):
        feats_BD = self.features(images_B3HW)
        return feats_BD, self.fc(feats_BD), None


IGNORED_PREFIXES = ("AuxLogits.",)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_inception_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The InceptionV3 tensors of a local weights file (torch ``state_dict``, loaded with ``weights_only``).

    Accepts a plain state_dict, one wrapped under ``state_dict``/``model``/``model_state_dict``, and DDP's
    ``module.`` prefix; drops ``AuxLogits.*``. Anything else is a ValueError saying what the file holds.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"InceptionV3 weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, EOF: all mean "not a torch weights file"
        raise ValueError(f"{path}: not a torch weights file loadable with weights_only=True "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); expected an "
                         "InceptionV3 state_dict saved with torch.save") from e
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict) and len(obj) <= 3:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors; expected an "
                         "InceptionV3 state_dict (torchvision inception_v3 or pytorch-fid FID Inception)")
    state = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if not k.startswith(IGNORED_PREFIXES):
            state[k] = v
    return state


def load_inception_weights(path: str | Path) -> tuple[InceptionV3, dict]:
    """A pretrained InceptionV3 (eval mode, resizing to 299²) from a local weights file, and what was loaded:
    ``{"path", "sha256", "num_classes", "fid_variant"}``. Wrong files give a ValueError naming the problem."""
    state = read_inception_state(path)
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2 or fc.shape[1] != FEATURE_DIM:
        shown = list(fc.shape) if fc is not None else "missing"
        raise ValueError(f"{path}: 'fc.weight' is {shown}; expected [classes, {FEATURE_DIM}] as in an InceptionV3 "
                         f"state_dict (keys such as {', '.join(list(state)[:3])} were found)")
    num_classes = int(fc.shape[0])
    model = InceptionV3(num_classes, fid_variant=num_classes == FID_CLASSES, resize_to=PRETRAINED_SIZE)
    check_state_matches(model, state, path)
    model.load_state_dict(state)
    model.eval()
    return model, {"path": str(Path(path).resolve()), "sha256": file_sha256(path), "num_classes": num_classes,
                   "fid_variant": model.fid_variant}


def check_state_matches(model: nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """Raise naming missing, unexpected and mis-shaped tensors unless ``state`` fits ``model`` exactly."""
    want = model.state_dict()
    for k in want:  # older saves lack BatchNorm's step counter, which inference never reads
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = want[k]
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {list(state[k].shape)} (expected {list(want[k].shape)})" for k in want
              if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        raise ValueError(f"{path}: not an InceptionV3 state_dict: tensors {', '.join(parts)}; expected the layer "
                         "names of torchvision's inception_v3 or pytorch-fid's FID Inception")
