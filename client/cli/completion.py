"""``pdcat completion bash|zsh``: a completion script made from the parser itself, so it always knows
every command, flag and fixed choice (``source <(pdcat completion bash)``)."""

from __future__ import annotations

import argparse
import shlex

__all__ = ["completion_script"]


def _words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """command -> its flags and fixed choices; "" -> the commands and the global flags."""
    words: dict[str, list[str]] = {"": []}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words[""].append(name)
                found: list[str] = []
                for inner in sub._actions:
                    found.extend(inner.option_strings)
                    if inner.choices and not inner.option_strings:
                        found.extend(str(c) for c in inner.choices)
                words[name] = found
        else:
            words[""].extend(action.option_strings)
    return words


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash function (zsh runs it through bashcompinit) completing commands, then flags and files."""
    words = _words(parser)
    cases = "\n".join(
        f"        {shlex.quote(name)}) opts={shlex.quote(' '.join(found))} ;;" for name, found in words.items() if name
    )
    script = f"""# pdcat completion ({shell}); load it with: source <(pdcat completion {shell})
_pdcat() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" opts
    if [ "$COMP_CWORD" -eq 1 ]; then
        opts={shlex.quote(" ".join(words[""]))}
    else
        case "${{COMP_WORDS[1]}}" in
{cases}
        *) opts="" ;;
        esac
    fi
    COMPREPLY=($(compgen -W "$opts" -- "$cur") $(compgen -f -- "$cur"))
}}
complete -F _pdcat pdcat
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script
