import sys
import types

import pytest

from opengallery import cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name}" in out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_missing_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A command whose module needs a third-party package that is not installed.
    monkeypatch.setitem(
        cli.COMMANDS, "fake", ("fake_command_module:main", "train", "a command needing torch")
    )
    monkeypatch.setitem(sys.modules, "fake_command_module", None)  # makes the import fail
    with pytest.raises(SystemExit) as raised:
        cli.main(["fake"])
    assert "pip install 'opengallery[train]'" in str(raised.value)


def test_dispatches_with_remaining_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    module = types.ModuleType("recording_module")
    module.main = lambda argv: seen.append(list(argv)) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "recording_module", module)
    monkeypatch.setitem(cli.COMMANDS, "record", ("recording_module:main", "train", "records"))
    assert cli.main(["record", "--flag", "x"]) == 3
    assert seen == [["--flag", "x"]]
