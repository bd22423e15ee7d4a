"""The project file on the command line: ``--project`` (the root option that finds ``dcgen.yaml`` and fills every
command's missing options from it through Click's ``default_map``, as ``--config`` does), the hints a missing option
gets, and ``dcgen init`` (which writes the file). The file's format and its table of which key fills which option
are ``dcgen.project``'s.

Click builds each command's context from its parent's ``default_map[command name]``; the root's map here is built
lazily, so the file is read (and a broken one refused) when a command starts, never for ``dcgen init`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import typer

from dcgen.cli.common import app, fail, user_errors
from dcgen.project import (COMMAND_OPTIONS, DEFAULT_OUTPUTS, ENV_VAR, FILE_NAME, META_KEY, NO_PROJECT,
                           PER_INVOCATION, Project, find_project, load_project, write_project)
from dcgen.storage import is_uri


def _flag(ctx, name: str) -> str:
    """``--gate-slack`` for option ``gate_slack`` of ``ctx``'s command."""
    param = next((p for p in ctx.command.params if p.name == name), None)
    return next((o for o in param.opts if o.startswith("--")), f"--{name}") if param else f"--{name}"


def command_key(ctx) -> str:
    """``"train vae"`` for the context of ``dcgen train vae``: the command as typed after ``dcgen``."""
    words = []
    while ctx is not None and ctx.parent is not None:
        words.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(reversed(words))


class ProjectDefaults(Mapping):
    """The root context's ``default_map``: ``self[command]`` is that command's options from the project file
    (nested: a group's entry holds its subcommands' under their names). Reads the file on first use."""

    def __init__(self, root, explicit: Optional[str]):
        self._root = root  # the root Click group: options in the file are checked against its commands
        self._explicit = explicit
        self._searched = Path.cwd()
        self._project: Optional[Project] = None
        self._read = False
        # (command, option) -> (value here, value as written, the key that gave it)
        self._filled: dict[tuple[str, str], tuple[Any, Any, str]] = {}

    # -- Mapping: Click only calls .get(command name) on the root's map
    def __getitem__(self, name: str) -> dict:
        if name == "init" or name not in getattr(self._root, "commands", {}) or self.project() is None:
            raise KeyError(name)
        return self._tree(name)

    def __iter__(self):
        names = [n for n in getattr(self._root, "commands", {}) if n != "init"]
        return iter(names if self.project() is not None else [])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def project(self) -> Optional[Project]:
        """The project file in use, read and checked once (a bad one ends the command with its error)."""
        if not self._read:
            self._read = True
            with user_errors():
                path = find_project(self._explicit, self._searched)
                if path is not None:
                    self._project = load_project(path)
                    self._check_options(self._project)
        return self._project

    def _tree(self, command: str) -> dict:
        project = self._project
        tree: dict[str, Any] = {}
        for option, key in COMMAND_OPTIONS.get(command, {}).items():
            value = project.local(key)
            if value is not None:
                tree[option] = value
                self._filled[(command, option)] = (value, project.written(key), key.split("/")[0])
        for option, value in project.options(command).items():
            tree[option] = value
            self._filled[(command, option)] = (value, value, f"options.{command}.{option}")
        group = self._command(command)
        for sub in getattr(group, "commands", {}):
            tree[sub] = self._tree(f"{command} {sub}")
        return tree

    def _command(self, command: str):
        cmd = self._root
        for word in command.split():
            cmd = getattr(cmd, "commands", {}).get(word)
            if cmd is None:
                return None
        return cmd

    def _check_options(self, project: Project) -> None:
        """Every ``options`` entry names a command and options it takes, and none a project key fills."""
        what = f"project file {project.path}"
        for command in project.keys.get("options", {}):
            cmd = self._command(command)
            if cmd is None or command == "init":
                raise ValueError(f"{what}: options: {command!r} is not a dcgen command (expected e.g. 'synth', "
                                 "'train vae')")
            takes = ({p.name for p in cmd.params if p.param_type_name == "option"} - set(PER_INVOCATION)
                     - set(COMMAND_OPTIONS.get(command, {})))
            for option in project.options(command):
                if option in COMMAND_OPTIONS.get(command, {}):
                    raise ValueError(f"{what}: options.{command}.{option}: 'dcgen {command} --{option}' comes from "
                                     f"the project key '{COMMAND_OPTIONS[command][option]}'; set it there")
                if option not in takes:
                    raise ValueError(f"{what}: options.{command}.{option}: 'dcgen {command}' takes no such option "
                                     f"here; expected one of {', '.join(sorted(takes))}")

    # -- what the CLI asks
    def filled_from(self, ctx, name: str) -> Optional[str]:
        """The key of the project file that gave option ``name`` of ``ctx``'s command its value, or None when it
        holds another (given on the command line, by --config, or a default)."""
        entry = self._filled.get((command_key(ctx), name))
        source = ctx.get_parameter_source(name)  # Typer vendors its own Click: compare the enum member by name
        if entry is None or source is None or source.name != "DEFAULT_MAP":
            return None  # given on the command line (or an environment variable), or the option's own default
        if ctx.default_map is None or ctx.default_map.get(name) is not entry[0]:
            return None
        return entry[2]

    def sent_value(self, ctx, name: str):
        """The value to send a cluster for option ``name`` of ``ctx``'s command when the project filled it: as
        the file writes it (relative paths then resolve under DCGEN_JOB_DIR there); None when it did not."""
        return self._filled[(command_key(ctx), name)][1] if self.filled_from(ctx, name) else None

    def hint(self, ctx, name: str) -> Optional[str]:
        """How to give option ``name`` of ``ctx``'s command that the command line lacks, or None when no project
        key fills it."""
        key = COMMAND_OPTIONS.get(command_key(ctx), {}).get(name)
        if key is None:
            return None
        flag = _flag(ctx, name)
        if self._project is None:
            where = (f"--project {NO_PROJECT}" if self._explicit == NO_PROJECT else f"no {FILE_NAME} in "
                     f"{self._searched} or its parents; --project FILE or {ENV_VAR} names another")
            return (f"No project file names it ({where}): create one with 'dcgen init --data STORE --preset "
                    f"PRESET', or pass {flag}.")
        return (f"The project file {self._project.path} {self._project.missing(key.split('/')[0])}: add it there "
                f"or pass {flag}.")


# the command that writes what a project key names (for a filled input that is not there yet)
MADE_BY = {"data": "'dcgen data synth-city' (or 'dcgen data import')", "vae": "'dcgen train'",
           "decoder": "'dcgen train' (its decoder stage; a run with --decoder-epochs 0 has none: set 'decoder' to "
                      "its VAE)",
           "dit": "'dcgen train'", "features": "'dcgen train'", "latents": "'dcgen train' (or 'dcgen encode')",
           "reference": "'dcgen eval reference'", "outputs.synth": "'dcgen synth'", "outputs.sample": "'dcgen sample'"}


def check_inputs(ctx) -> None:
    """Fail naming the key and the command that writes it when an input the project file filled (any option but
    --out) is a local path with nothing there yet; called for runs on this machine only (a cluster has its own)."""
    defaults = ctx.meta.get(META_KEY)
    if defaults is None:
        return
    for name, value in ctx.params.items():
        key = defaults.filled_from(ctx, name) if name != "out" else None
        if key in MADE_BY and not is_uri(value) and not Path(value).exists():
            flag = _flag(ctx, name)
            fail(f"{flag} {value} (from '{key}' in the project file {defaults.project().path}) is not there yet: "
                 f"{MADE_BY[key]} writes it; or pass {flag}")


def _use_project(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    defaults = ProjectDefaults(ctx.command, value)
    ctx.default_map = defaults
    ctx.meta[META_KEY] = defaults
    return value


PROJECT_OPTION = typer.Option(None, "--project", envvar=ENV_VAR, is_eager=True, callback=_use_project,
                              metavar="FILE", help=f"Project file whose data store, preset, runs, reference and "
                              f"outputs fill the options a command is not given (default: {FILE_NAME} in the "
                              f"current directory or its nearest parent; '{NO_PROJECT}': none). Write one with "
                              "'dcgen init'.")


def project_hint(ctx, name: str) -> Optional[str]:
    """The hint for option ``name`` of ``ctx``'s command, which the command line lacks (None: none to give)."""
    defaults = ctx.meta.get(META_KEY)
    return defaults.hint(ctx, name) if defaults is not None else None


def project_source(ctx, name: str) -> Optional[str]:
    """Where option ``name`` of ``ctx``'s command got its value when the project file gave it, else None."""
    defaults = ctx.meta.get(META_KEY)
    key = defaults.filled_from(ctx, name) if defaults is not None else None
    return f"(from '{key}' in the project file {defaults.project().path})" if key else None


@app.command("init", help=f"Write a project file ({FILE_NAME}) naming the project's data store, preset, runs "
             "directory, reference statistics and default outputs: every dcgen command run in that directory or "
             "below fills the options it is not given from it (options on the command line win).\n\n"
             "Example: dcgen init --data city.zarr --preset small")
def init_cmd(
    directory: Path = typer.Argument(Path("."), help="Project directory (created if missing); relative paths in "
                                     "the file are relative to it."),
    data: str = typer.Option("city.zarr", help="Scene store (need not exist yet: 'dcgen data synth-city' writes "
                             "it)."),
    preset: str = typer.Option("small", help="debug | small | carlasc | occ3d."),
    runs: str = typer.Option("runs", help="Run directory of 'dcgen train'; checkpoints default to RUNS/vae/best, "
                             "RUNS/dit/best, RUNS/features/best, and generation decodes with RUNS/decoder/best."),
    reference: str = typer.Option("reference.npz", help="Reference statistics ('dcgen eval reference' writes them; "
                                  "'dcgen synth' gates on them)."),
    synth_out: str = typer.Option(DEFAULT_OUTPUTS["synth"], help="Default --out of 'dcgen synth'."),
    sample_out: str = typer.Option(DEFAULT_OUTPUTS["sample"], help="Default --out of 'dcgen sample'."),
    force: bool = typer.Option(False, "--force", help=f"Replace an existing {FILE_NAME}."),
) -> None:
    with user_errors():
        path = write_project(directory, data=data, preset=preset, runs=runs, reference=reference,
                             outputs={"synth": synth_out, "sample": sample_out}, force=force)
    typer.echo(f"wrote {path}")


def require(ctx, value, name: str, message: str):
    """``value``, or a one-line error: ``message`` and how a project file would give option ``name``."""
    if value is None:
        hint = project_hint(ctx, name)
        fail(f"{message}. {hint}" if hint else message)
    return value
