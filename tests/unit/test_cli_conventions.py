"""CLI conventions people expect from gh, docker and git (issue 15, item 9): did-you-mean on a typo,
a completion script that knows every command, flag and fixed choice."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from client.cli.completion import completion_script
from client.cli.parser import build_parser, command_of


def test_a_mistyped_command_or_choice_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, suggestion in (
        (["pul", "x"], "did you mean 'pull'?"),
        (["cache", "lss"], "did you mean 'ls'?"),
        (["contxt", "ls"], "did you mean 'context'?"),
        (["context", "ues"], "did you mean 'use'?"),
    ):
        with pytest.raises(SystemExit) as exited:
            build_parser(only=command_of(argv)).parse_args(argv)
        assert exited.value.code == 2
        assert suggestion in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["zzzzzz"])
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to run the script")
def test_the_completion_script_completes_commands_flags_and_choices() -> None:
    script = completion_script(build_parser(), "bash")

    def complete(*words: str) -> set[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        show = 'printf "%s\\n" "${COMPREPLY[@]}"'
        run = f"{script}\nCOMP_WORDS=(pdcat {quoted}); COMP_CWORD={len(words)}; _pdcat; {show}"
        done = subprocess.run(["bash", "-c", run], capture_output=True, text=True, check=True, cwd="/")
        return set(done.stdout.split())

    assert {"push", "pull"} <= complete("pu")
    assert "--allow-any-folder" in complete("push", "--al")
    assert {"prune", "pin"} <= complete("cache", "p")
    assert "context" in complete("con")
    assert {"ls", "use"} <= complete("context", "") and "--json" in complete("context", "--j")
    assert "--all" in complete("logout", "--a")
    assert completion_script(build_parser(), "zsh").startswith("autoload -U +X bashcompinit")


def _flags(parser: argparse.ArgumentParser) -> list[tuple[object, ...]]:
    return [
        (tuple(a.option_strings), a.dest, a.default, a.nargs, a.const, a.choices, a.required, a.help, type(a))
        for a in parser._actions
    ]


def test_building_one_commands_flags_gives_that_command_the_same_parser() -> None:
    """``main`` builds only the flags of the command it runs (``build_parser(only=...)``)."""
    full = build_parser()
    commands = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(commands) > 20
    for name, whole in commands.items():
        alone = build_parser(only=name)
        chosen = next(a for a in alone._actions if isinstance(a, argparse._SubParsersAction)).choices
        assert list(chosen) == list(commands)  # every command still listed (--help, did you mean)
        assert _flags(chosen[name]) == _flags(whole), name
        others = [c for c in chosen if c != name]
        assert all(a.option_strings == ["-h", "--help"] for c in others for a in chosen[c]._actions)


def test_the_command_is_the_first_word_that_is_not_an_option() -> None:
    assert command_of(["--debug", "push", "x", "--catalog", "ls"]) == "push"
    assert command_of(["ls", "--tag", "x"]) == "ls"
    assert command_of(["--help"]) == ""
    assert command_of([]) == ""
    args = build_parser(only=command_of(["--debug", "ls", "ubuntu", "--arch", "arm64"])).parse_args(
        ["--debug", "ls", "ubuntu", "--arch", "arm64"]
    )
    assert (args.command, args.id, args.arch, args.debug) == ("ls", "ubuntu", "arm64", True)
