"""Shell completion: `skeleton completion bash|zsh|fish` prints the script (Click's
shell_complete machinery, env var `_SKELETON_COMPLETE`), and `complete_nodes` completes
`--node`/`--exclude` values: node ids, `@GROUP`/`@ROLE` and `@failed`, from the
configuration, plus the registry's nodes when it answers within `REGISTRY_WAIT` seconds.

A completion runs on every TAB: it must never hang the shell nor print a traceback, so any
error (a broken config, a registry that is down) just means fewer candidates.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import click
from click.shell_completion import BashComplete, CompletionItem, get_completion_class

if TYPE_CHECKING:
    from skeleton_app.config import Settings
    from skeleton_app.nodes import Node

# libpq's connect_timeout cannot go below 2 s, so the registry is asked from a daemon
# thread that the completion stops waiting for after this long (the process then exits).
REGISTRY_WAIT = 0.3
# A slow link to the registry may want longer (a shell waits on every TAB: at most 5 s).
WAIT_ENV = "SKELETON_COMPLETION_WAIT"


def registry_wait() -> float:
    """REGISTRY_WAIT, or $SKELETON_COMPLETION_WAIT seconds (0..5) when set and a number."""
    import math
    import os

    try:
        wait = float(os.environ.get(WAIT_ENV, REGISTRY_WAIT))
    except ValueError:
        return REGISTRY_WAIT
    return min(max(wait, 0.0), 5.0) if math.isfinite(wait) else REGISTRY_WAIT
SHELLS = ("bash", "zsh", "fish")

INSTALL_HELP = """Print the completion script for SHELL. Install it with:

\b
  bash: skeleton completion bash > ~/.local/share/bash-completion/completions/skeleton
  zsh:  skeleton completion zsh > "${fpath[1]}/_skeleton"
  fish: skeleton completion fish > ~/.config/fish/completions/skeleton.fish

or load it for this shell only: eval "$(skeleton completion bash)".
`--node <TAB>` then completes node ids, and @ groups, roles and @failed."""


class _Bash(BashComplete):
    """Click's bash script, except for the words it sends: bash cuts words at every
    COMP_WORDBREAKS character, `@` and `:` included, so `--node @st<TAB>` reached Click as
    `--node`, `@`, `st` (a stray argument). This one re-splits the line on blanks only and
    hands bash each candidate without what bash keeps of the word (up to its last break)."""

    source_template = r"""%(complete_func)s() {
    local IFS=$'\n'
    local response line word strip i
    local -a words
    line=${COMP_LINE:0:COMP_POINT}
    IFS=$' \t' read -ra words <<< "$line"
    [[ -z $line || $line == *[[:blank:]] ]] && words+=("")
    word=${words[${#words[@]}-1]}
    strip=""
    for (( i=${#word}-1; i>=0; i-- )); do
        if [[ $COMP_WORDBREAKS == *"${word:i:1}"* ]]; then strip=${word:0:i+1}; break; fi
    done

    response=$(env COMP_WORDS="${words[*]}" COMP_CWORD=$(( ${#words[@]} - 1 )) \
        %(complete_var)s=bash_complete $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=("${value#"$strip"}")
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""


@click.command("completion", help=INSTALL_HELP)
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> int:
    script_class = _Bash if shell == "bash" else get_completion_class(shell)
    assert script_class is not None  # every name in SHELLS is one of Click's
    script = script_class(ctx.find_root().command, {}, "skeleton", "_SKELETON_COMPLETE")
    click.echo(script.source())
    return 0


def complete_nodes(ctx: click.Context, _param: click.Parameter,
                   incomplete: str) -> list[CompletionItem]:
    """Candidates for the element after the last comma of a `--node`/`--exclude` value;
    the elements before it are kept as typed."""
    head, comma, last = incomplete.rpartition(",")
    names = node_names(_settings(ctx))
    return [CompletionItem(f"{head}{comma}{name}") for name in names if name.startswith(last)]


def node_names(settings: Settings | None) -> list[str]:
    """Node ids, then `@failed`, `@GROUP` and `@ROLE`, each once, in that order."""
    from skeleton_app.nodes import FAILED_REF

    if settings is None:
        return [FAILED_REF]
    nodes = list(settings.nodes) + list(_registry_nodes(settings))
    ids = dict.fromkeys(n.id for n in nodes)
    refs = dict.fromkeys([FAILED_REF, *(f"@{g}" for g in sorted(dict(settings.groups))),
                          *(f"@{r}" for r in sorted({r for n in nodes for r in n.roles}))])
    return [*ids, *refs]


def _settings(ctx: click.Context) -> Settings | None:
    """The configuration the command line names (`--config` on the command or on
    `skeleton`), else the default one; None when it cannot be read."""
    from skeleton_app.config import load_config
    from skeleton_app.errors import SkeletonError

    config = None
    walk: click.Context | None = ctx
    while walk is not None and config is None:
        config = walk.params.get("config")
        walk = walk.parent
    try:
        return load_config(config)
    except (SkeletonError, OSError):
        return None


def _registry_nodes(settings: Settings) -> tuple[Node, ...]:
    """The registry's nodes if it answers within `registry_wait()` seconds, else none."""
    if not settings.registry.dsn:
        return ()
    found: list[tuple[Node, ...]] = []

    def ask() -> None:
        from skeleton_app.errors import SkeletonError
        from skeleton_app.registry import open_registry

        try:
            with open_registry(settings, application_name="skeleton-completion") as registry:
                found.append(registry.list_nodes()[0])
        except SkeletonError:
            pass

    asker = threading.Thread(target=ask, name="skeleton-completion", daemon=True)
    asker.start()
    asker.join(registry_wait())
    return found[0] if found else ()
