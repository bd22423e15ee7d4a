"""The project file ``dcgen.yaml``: one project's data store, preset, training runs, reference statistics, feature
networks and default outputs, so that commands run as written without re-typing paths (issue 26).

A command finds the file given by ``--project FILE`` or ``DCGEN_PROJECT``, else ``dcgen.yaml`` in the current
directory or the nearest parent holding one, and fills the options it is not given from it (``COMMAND_OPTIONS``
says which key fills which option); options on the command line, then a ``--config`` file, win. The file is
checked against ``schemas/project.schema.json``. Relative paths in it are relative to the file's directory; for a
run on a cluster (``--cluster``/``--address``) they are sent as written, so they resolve under ``DCGEN_JOB_DIR``
there like any relative path (README "Cluster"). The checkpoints and latents default to the layout ``dcgen
train`` writes under ``runs`` (``runs/vae/best``, ...); generation (``sample``, ``synth``, ``serve``) decodes with
the key ``decoder`` (default ``runs/decoder/best``, the pipeline's fine-tuned decoder), training and encoding use
``vae`` (a file that names ``vae`` but neither ``decoder`` nor ``runs`` decodes with that ``vae``: a project that
names its VAE explicitly decodes with it unless it names a decoder). An ``options`` section gives further
per-command defaults, taken as written. Nothing here imports Click, torch or Ray: the CLI (``dcgen.cli.project``)
does the filling, the quickstart and ``dcgen init`` write files with ``write_project``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dcgen import storage
from dcgen.config import schema_errors

FILE_NAME = "dcgen.yaml"
ENV_VAR = "DCGEN_PROJECT"
NO_PROJECT = "none"  # --project none: read no project file (remote jobs get every value on their command line)
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "project.schema.json"
#: ctx.meta key under which the CLI keeps the project defaults of the current invocation (``dcgen.jobs_client``
#: asks it how a value it filled is written in the file, to forward it to a cluster)
META_KEY = "dcgen.project"

# Keys that default to a place under ``runs`` when the file does not name them: the layout `dcgen train` writes.
UNDER_RUNS = {"latents": "latents.zarr", "vae": "vae/best", "decoder": "decoder/best", "dit": "dit/best",
              "features": "features/best", "runs/vae": "vae", "runs/dit": "dit", "runs/features": "features",
              "runs/decoder": "decoder"}

# command (as typed after `dcgen`) -> {option name: project key}; "outputs.X" is a key of the outputs mapping,
# "runs/X" the training run directory RUNS/X. Generation decodes with "decoder" (the VAE fine-tuned for the DiT's
# samples, same latent space); what trains on or encodes with the VAE takes "vae".
COMMAND_OPTIONS: dict[str, dict[str, str]] = {
    "train": {"data": "data", "preset": "preset", "out": "runs"},
    "train vae": {"data": "data", "preset": "preset", "out": "runs/vae"},
    "train dit": {"latents": "latents", "vae": "vae", "preset": "preset", "out": "runs/dit"},
    "train decoder": {"vae": "vae", "data": "data", "out": "runs/decoder"},
    "train calibrate": {"vae": "vae", "data": "data"},
    "train features": {"data": "data", "preset": "preset", "out": "runs/features"},
    "encode": {"vae": "vae", "data": "data", "out": "latents"},
    "sample": {"vae": "decoder", "dit": "dit", "out": "outputs.sample"},
    "synth": {"vae": "decoder", "dit": "dit", "source": "data", "reference": "reference", "features": "features",
              "out": "outputs.synth"},
    "serve": {"vae": "decoder", "dit": "dit"},
    "data synth-city": {"out": "data", "preset": "preset"},
    "eval recon": {"vae": "vae", "data": "data"},
    "eval reference": {"data": "data", "features": "features", "out": "reference"},
    "eval gen": {"real": "reference", "fake": "outputs.synth", "features": "features"},
    "eval fidelity": {"real": "data", "fake": "outputs.synth", "features": "features"},
    "eval downstream": {"real": "data"},
}
#: options a project never fills: they choose how and where one invocation runs, or destroy earlier results
PER_INVOCATION = ("config", "dry_run", "cluster", "address", "overwrite")
DEFAULT_OUTPUTS = {"synth": "synth.zarr", "sample": "samples.zarr"}


@dataclass(frozen=True)
class Project:
    """A schema-valid project file: ``keys`` as written, ``path`` the file (absolute)."""

    path: Path
    keys: dict = field(repr=False)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def written(self, key: str) -> str | None:
        """The value of ``key`` ("data", "outputs.synth", "runs/vae", ...) as the file writes it (a key under
        ``runs`` derived from ``runs``), or None when the file names neither. ``decoder`` not written and no
        ``runs`` to derive it from is the ``vae`` the file names: that VAE decodes, as it would without a decoder
        stage (the rule reads the file, never which checkpoints exist)."""
        if key.startswith("outputs."):
            return self.keys.get("outputs", {}).get(key.split(".", 1)[1])
        if key in self.keys:
            return self.keys[key]
        if key in UNDER_RUNS and "runs" in self.keys:
            return storage.join(self.keys["runs"], *UNDER_RUNS[key].split("/"))
        if key == "decoder":
            return self.keys.get("vae")
        return None

    def local(self, key: str) -> str | None:
        """The value of ``key`` for a command run here: a path made absolute against the file's directory."""
        value = self.written(key)
        if value is None or key == "preset" or storage.is_uri(value):
            return value
        return str(self.directory / Path(value).expanduser())

    def options(self, command: str) -> dict:
        """The ``options`` section's defaults of ``command`` (option names with underscores)."""
        given = self.keys.get("options", {}).get(command, {})
        return {name.replace("-", "_"): value for name, value in given.items()}

    def missing(self, key: str) -> str:
        """What the file lacks for ``key``, in words."""
        if key.startswith("outputs."):
            return f"sets no '{key}'"
        if key == "decoder":
            return "sets no 'decoder' (nor 'runs' or 'vae', from which it defaults)"
        return f"sets no '{key}'" + (" (nor 'runs', from which it defaults)" if key in UNDER_RUNS else "")


# ---- finding and reading -------------------------------------------------------------------------------------

def find_project(explicit: str | None = None, start: str | Path | None = None) -> Path | None:
    """The project file to use: ``explicit`` (``--project`` or ``DCGEN_PROJECT``; "none" for no file), else
    ``dcgen.yaml`` in ``start`` (default: the current directory) or its nearest parent holding one, else None."""
    if explicit is not None:
        if explicit == NO_PROJECT:
            return None
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / FILE_NAME
        if not path.is_file():
            raise ValueError(f"project file {explicit}: no such file (from --project or {ENV_VAR}; expected a "
                             f"{FILE_NAME} written by 'dcgen init', or '{NO_PROJECT}' for no project file)")
        return path.resolve()
    here = Path(start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / FILE_NAME).is_file():
            return directory / FILE_NAME
    return None


def load_project(path: str | Path) -> Project:
    """The project file at ``path``, checked against ``schemas/project.schema.json``."""
    import yaml

    path = Path(path).resolve()
    try:
        keys = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValueError(f"project file {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"project file {path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    validate_project(keys, f"project file {path}")
    return Project(path, keys)


def validate_project(keys, what: str) -> None:
    """Raise naming the key of the first schema violation and what the schema expects there."""
    if not isinstance(keys, dict):
        found = "nothing" if keys is None else f"a {type(keys).__name__}"
        raise ValueError(f"{what}: expected a mapping of keys (version: 1, data, preset, runs, ...), found {found}")
    errors = schema_errors(SCHEMA_FILE, keys, what, "project")
    if not errors:
        return
    err = errors[0]
    where = ".".join(map(str, err.absolute_path))
    if err.validator == "additionalProperties":
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        unknown = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        raise ValueError(f"{what}: unknown key {'.'.join(filter(None, (where, unknown[0])))!r}; expected keys"
                         f"{' of ' + where if where else ''}: {allowed}")
    if err.validator == "required":
        raise ValueError(f"{what}: {err.message} (write 'version: 1' as its first line)")
    if err.validator == "propertyNames":
        raise ValueError(f"{what}: {where or 'top level'}: {err.instance!r} is not a valid name "
                         f"({'a command as typed after dcgen' if where == 'options' else 'an option name'}, "
                         "lower case)")
    if err.validator == "oneOf":
        raise ValueError(f"{what}: '{where}': {err.instance!r} is not valid; expected a string, number, boolean "
                         "or a list of them")
    raise ValueError(f"{what}: '{where or 'top level'}': {err.message}")


# ---- writing -------------------------------------------------------------------------------------------------

def write_project(directory: str | Path, *, data: str, preset: str, runs: str = "runs",
                  reference: str = "reference.npz", decoder: str | None = None, outputs: dict | None = None,
                  options: dict | None = None, force: bool = False) -> Path:
    """Write ``DIRECTORY/dcgen.yaml`` (values as given: relative paths are relative to ``directory``); refuses
    to replace an existing file unless ``force``. ``decoder`` names the checkpoint generation decodes with where
    it is not ``RUNS/decoder/best`` (a run without the decoder stage: its VAE). Returns the file's path."""
    path = Path(directory).resolve() / FILE_NAME
    keys = {"version": 1, "data": data, "preset": preset, "runs": runs, "reference": reference,
            "outputs": {**DEFAULT_OUTPUTS, **(outputs or {})}}
    if decoder is not None:
        keys["decoder"] = decoder
    if options:
        keys["options"] = options
    validate_project(keys, f"project file {path}")
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE_NAME}.tmp")
    tmp.write_text(project_text(keys))
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def project_text(keys: dict) -> str:
    """The file's YAML, commented: each key with the options it fills (values as JSON scalars, which YAML reads)."""
    def v(value) -> str:
        return json.dumps(value)

    runs = keys["runs"]
    lines = [
        f"# dcgen project file ({SCHEMA_FILE.parent.name}/{SCHEMA_FILE.name}). dcgen commands run in this directory",
        "# or below fill the options they are not given from it; options on the command line win. Relative paths",
        "# are relative to this directory (with --cluster/--address: to DCGEN_JOB_DIR on the cluster).",
        "version: 1",
        f"data: {v(keys['data'])}  # scene store: --data of train/encode/eval, --source of synth, "
        "--out of data synth-city",
        f"preset: {v(keys['preset'])}",
        f"runs: {v(runs)}  # dcgen train --out; train vae|dit|decoder|features write RUNS/vae, RUNS/dit, ...",
    ]
    # the two VAE keys say which commands each fills: generation decodes with `decoder`, the rest uses `vae`
    uses = {"vae": "--vae of train dit|decoder, encode, eval recon", "decoder": "--vae of sample, synth, serve"}
    for key in ("latents", "vae", "decoder", "dit", "features"):
        if key in keys:
            lines.append(f"{key}: {v(keys[key])}" + (f"  # {uses[key]}" if key in uses else ""))
            continue
        default = v(storage.join(runs, *UNDER_RUNS[key].split("/")))
        written_by = ", from dcgen train's decoder stage" if key == "decoder" else ""
        lines.append(f"# {key}: {default}  (the default{written_by})" + (f"; {uses[key]}" if key in uses else ""))
    lines += [f"reference: {v(keys['reference'])}  # eval reference --out; synth --reference (quality gates "
              "on); eval gen --real",
              "outputs:  # default --out of synth and sample (and --fake of eval gen, eval fidelity)"]
    lines += [f"  {name}: {v(value)}" for name, value in keys["outputs"].items()]
    if keys.get("options"):
        lines.append("options:  # further defaults per command (names as in --help, values as written)")
        for command, values in keys["options"].items():
            lines.append(f"  {command}:")
            lines += [f"    {name}: {v(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"
