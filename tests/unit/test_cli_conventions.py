"""CLI conventions people expect from gh, docker and git (issue 15, item 9): did-you-mean on a typo,
a completion script that knows every command, flag and fixed choice."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from client.cli.completion import completion_script
from client.cli.parser import build_parser


def test_a_mistyped_command_or_choice_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, suggestion in (
        (["pul", "x"], "did you mean 'pull'?"),
        (["cache", "lss"], "did you mean 'ls'?"),
        (["contxt", "ls"], "did you mean 'context'?"),
        (["context", "ues"], "did you mean 'use'?"),
    ):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(argv)
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
