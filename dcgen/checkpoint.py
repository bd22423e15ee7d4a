"""The checkpoint format: a directory with unwrapped ``state_dict``s in ``state.pt`` and JSON metadata in
``meta.json`` (kind, config, step, metrics, versions, git sha). Nothing is pickled: ``state.pt`` holds only
tensors and plain containers and is loaded with ``torch.load(weights_only=True)``; the config in ``meta.json``
rebuilds the exact model (nanoGPT's habit of keeping the config with the weights).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import numpy
    import torch

    import dcgen

    return {"dcgen": dcgen.__version__, "torch": torch.__version__, "numpy": numpy.__version__}


def save(path: str | os.PathLike, *, kind: str, config: dict, state: dict[str, Any], step: int,
         metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (a temp dir renamed into place); on a URI, written locally and then
    copied over the previous one. Returns the local path, or the URI as given."""
    import torch

    from dcgen import storage

    if storage.is_uri(path):
        with tempfile.TemporaryDirectory(prefix="dcgen-ckpt-") as tmp_dir:
            local = save(Path(tmp_dir) / "checkpoint", kind=kind, config=config, state=state, step=step,
                         metrics=metrics, extra=extra)
            storage.upload_dir(local, str(path))
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "step": int(step),
        "metrics": metrics or {},
        "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_sha": git_sha(),
        **(extra or {}),
    }
    torch.save(state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if path.exists():
        old = path.with_name(f".{path.name}-old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
    return path


def update_meta(path: str | os.PathLike, *, kind: str, **entries) -> None:
    """Set ``entries`` in a checkpoint's metadata, its weights untouched (so its ``checkpoint_id`` stays); the
    metadata file is replaced atomically (on a URI: the directory is written back)."""
    from dcgen import storage

    local = _local(path)
    meta = _read_meta(local, kind)
    meta.update(entries)
    tmp = local / f".{META_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, local / META_FILE)
    if storage.is_uri(path):
        storage.upload_dir(local, str(path))


def _local(path) -> Path:
    """The checkpoint's local directory (a URI's is a cached download)."""
    from dcgen import storage

    if not storage.is_uri(path):
        return Path(path)
    try:
        return storage.local_dir(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a dcgen checkpoint ({e})") from e


def read_meta(path: str | os.PathLike, kind: str | None = None) -> dict:
    """The metadata of a checkpoint (local or a URI); a clear error for a missing, corrupt or wrong-kind one."""
    return _read_meta(_local(path), kind)


def _read_meta(path: Path, kind: str | None) -> dict:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise ValueError(f"{path}: not a dcgen checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: unreadable checkpoint metadata ({e})") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{path}: a {meta.get('kind')!r} checkpoint, expected a {kind!r} checkpoint")
    return meta


def load(path: str | os.PathLike, kind: str | None = None, map_location="cpu", mmap: bool = False) -> tuple[dict, dict]:
    """``(meta, state)`` of a checkpoint, loaded with ``weights_only=True``. ``mmap`` maps the tensors' storage
    instead of reading it: the pickle is still checked in full, so a driver can vet a checkpoint at almost no cost."""
    import pickle

    import torch

    local = _local(path)
    meta = _read_meta(local, kind)
    state_path = local / STATE_FILE
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice ending in "weights_only=False", which would run the file's code
        text = str(e)
        found = re.search(r"GLOBAL (\S+)", text)
        if found:
            raise ValueError(f"{state_path}: checkpoint carries pickled objects ({found.group(1)}); expected only "
                             "tensors and plain containers (dcgen loads weights with torch.load(weights_only=True) "
                             "and never runs code from a checkpoint); re-save the state_dicts alone") from None
        reason = (text.partition("WeightsUnpickler error:")[2].strip() or text).splitlines() or ["no detail"]
        raise ValueError(f"{state_path}: corrupted or unreadable checkpoint weights (UnpicklingError: "
                         f"{reason[0]})") from None
    except Exception as e:  # torch raises RuntimeError/EOFError for damaged files
        raise ValueError(f"{state_path}: corrupted or unreadable checkpoint weights ({type(e).__name__}: {e})") from e
    return meta, state


def checkpoint_id(path: str | os.PathLike) -> str:
    """A short stable id of a checkpoint: kind, step and the first bytes of the weights' hash."""
    import hashlib

    local = _local(path)
    meta = _read_meta(local, None)
    h = hashlib.sha256()
    with open(local / STATE_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{meta['kind']}-{meta['step']}-{h.hexdigest()[:12]}"


def latent_space_id(path: str | os.PathLike) -> str:
    """The latent space a VAE checkpoint encodes into: its own ``checkpoint_id``, or, for a decoder fine-tuned
    with the encoder frozen (``dcgen train decoder``), the one recorded from the VAE it started from. Latent
    stores and DiTs are tied to this id, so a DiT decodes through any VAE of its latent space."""
    meta = read_meta(path)
    return str(meta.get("latent_space") or checkpoint_id(path))
