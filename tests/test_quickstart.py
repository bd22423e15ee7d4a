"""The quickstart's sizes and its refusals (the full run is the README's first command, minutes long)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dcgen.cli import app
from dcgen.quickstart import QUICKSTART_SIZES, QuickstartConfig


def test_sizes_follow_the_preset_and_the_overrides():
    assert QuickstartConfig().sizes() == QUICKSTART_SIZES["debug"]
    clips, *_, scenes, _ = QuickstartConfig(clips=64, scenes=24).sizes()
    assert (clips, scenes) == (64, 24)


@pytest.mark.parametrize("options, message", [
    ({"preset": "huge"}, "quickstart preset 'huge'; expected one of debug, small"),
    ({"clips": 10}, "--clips 10: the quickstart needs at least 32 clips"),
    ({"scenes": 12}, "--scenes 12: expected a positive multiple of 8"),
])
def test_bad_sizes_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        QuickstartConfig(**options).sizes()


def test_cli_refuses_bad_sizes_before_writing_anything(tmp_path):
    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--scenes", "5"])
    assert result.exit_code == 2 and "--scenes 5: expected a positive multiple of 8" in result.output
    assert not out.exists()
