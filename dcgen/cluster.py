"""Cluster-launcher files: check one against Ray's own schema, and find (or bring up) the head of its cluster.

A remote run (``--cluster cluster.yaml``, issue 8) needs the URL of the cluster's job server. The file is first
checked offline with the autoscaler's ``prepare_config`` + ``validate_config`` (the checks ``ray up`` makes; no
cloud credentials needed), so a malformed file fails here with Ray's message instead of after minutes of
provisioning. Then the head is looked up through the autoscaler SDK, and created with ``create_or_update_cluster``
only when none is running. Provider SDKs (boto3 for AWS) are needed from that step on: ``pip install
'dcgen[cloud]'``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_DASHBOARD_PORT = 8265


def load_cluster_config(path: str | os.PathLike) -> dict:
    """The cluster-launcher file at ``path`` with Ray's defaults filled in, after Ray's schema checks."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cluster file {path}: no such file (expected a Ray cluster-launcher YAML, e.g. "
                         "cluster.yaml at the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"cluster file {path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"cluster file {path}: expected a YAML mapping (cluster_name, provider, "
                         f"available_node_types, ...), got {type(raw).__name__}")
    if not isinstance(raw.get("provider"), dict) or "type" not in raw["provider"]:
        raise ValueError(f"cluster file {path}: 'provider' with a 'type' (aws, gcp, azure, ...) is required")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        config = prepare_config(raw)
        validate_config(config)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ValueError(f"cluster file {path}: fails Ray's cluster schema at {where}: {e.message}") from None
    except (ValueError, KeyError, NotImplementedError, AssertionError) as e:
        raise ValueError(f"cluster file {path}: rejected by Ray's cluster checks: {e}") from None
    return config


def dashboard_port(config: dict) -> int:
    """The job server's port: ``--dashboard-port`` in the head's start commands, else Ray's default 8265."""
    for command in config.get("head_start_ray_commands", []):
        m = re.search(r"--dashboard-port[= ](\d+)", str(command))
        if m:
            return int(m.group(1))
    return DEFAULT_DASHBOARD_PORT


def head_job_server(path: str | os.PathLike, *, create: bool = True, log=print) -> str:
    """``http://HEAD:PORT`` of the cluster described by ``path``; brings the cluster up first if no head runs
    and ``create`` is set (what ``ray up`` does; file mounts are resolved against the file's directory)."""
    path = Path(path).resolve()
    config = load_cluster_config(path)
    config = _with_absolute_mounts(config, path.parent)
    try:
        from ray.autoscaler.sdk import create_or_update_cluster, get_head_node_ip

        try:
            ip = get_head_node_ip(config)
        except RuntimeError as e:
            if "not found" not in str(e).lower() or not create:
                raise
            log(f"no head node of cluster {config['cluster_name']!r} is running: bringing it up from {path} "
                "(this takes several minutes; `ray up` does the same)")
            create_or_update_cluster(config, no_restart=True)
            ip = get_head_node_ip(config)
    except ImportError as e:
        raise ValueError(f"cluster file {path}: the {config['provider']['type']!r} provider's SDK is missing on "
                         f"this machine: pip install -e '.[cloud]' ({e})") from None
    except Exception as e:  # provider SDKs raise their own types (botocore, googleapiclient): name the step
        raise ValueError(f"cluster file {path}: could not find or start the head node of cluster "
                         f"{config['cluster_name']!r}: {type(e).__name__}: {e}") from None
    return f"http://{ip}:{dashboard_port(config)}"


def _with_absolute_mounts(config: dict, base: Path) -> dict:
    """``file_mounts`` local paths made absolute against ``base`` so the result does not depend on the cwd."""
    mounts = {remote: local if os.path.isabs(os.path.expanduser(local)) else str(base / local)
              for remote, local in config.get("file_mounts", {}).items()}
    return {**config, "file_mounts": mounts}
