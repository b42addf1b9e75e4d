"""`skeleton completion bash|zsh|fish`, and `--node <TAB>` in a real bash: the generated
script is sourced in `bash -c` and its function run with the line typed so far, as bash does
on TAB (COMP_LINE/COMP_POINT, COMP_WORDS/COMP_CWORD); Click's env protocol
(`_SKELETON_COMPLETE=bash_complete`) is checked directly too."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
CONFIG = """\
nodes:
  - {id: node-01, host: 192.0.2.1, roles: [stt]}
  - {id: node-02, host: 192.0.2.2, roles: [stt, tts]}
  - {id: edge-1, host: 192.0.2.3}
groups:
  web: [node-01, edge-1]
"""


def env_for(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    env.update({"PATH": f"{BIN}:{env.get('PATH', '')}", "SKELETON_CONFIG": str(config),
                **extra})
    return env


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def tab(line: str, env: Mapping[str, str]) -> list[str]:
    """What bash offers for TAB at the end of `line`, through the script `skeleton
    completion bash` prints."""
    script = f"""
eval "$(skeleton completion bash)"
COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"; COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=("") && COMP_CWORD=$(( COMP_CWORD + 1 ))
COMPREPLY=()
_skeleton_completion skeleton
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=dict(env),
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [ln for ln in done.stdout.splitlines() if ln]


def test_scripts_for_every_shell(config: Path) -> None:
    for shell, needle in (("bash", "complete -o nosort -F _skeleton_completion skeleton"),
                          ("zsh", "#compdef skeleton"), ("fish", "complete --no-files")):
        done = subprocess.run([str(BIN / "skeleton"), "completion", shell],
                              capture_output=True, text=True, env=env_for(config), timeout=60)
        assert done.returncode == 0, done.stderr
        assert needle in done.stdout and "_SKELETON_COMPLETE" in done.stdout
    bad = subprocess.run([str(BIN / "skeleton"), "completion", "tcsh"], capture_output=True,
                         text=True, env=env_for(config), timeout=60)
    assert bad.returncode == 2


def test_node_completion_in_bash(config: Path) -> None:
    env = env_for(config)
    assert tab("skeleton cluster exec --node ", env) == [
        "node-01", "node-02", "edge-1", "@failed", "@web", "@stt", "@tts"]
    assert tab("skeleton cluster exec --node no", env) == ["node-01", "node-02"]
    # bash cuts the word at `@` (COMP_WORDBREAKS): it gets what follows the `@`
    assert tab("skeleton cluster exec --node @", env) == ["failed", "web", "stt", "tts"]
    assert tab("skeleton cluster status --node @t", env) == ["tts"]
    # after a comma: the last element, the ones before kept
    assert tab("skeleton cluster deploy --node node-01,e", env) == ["node-01,edge-1"]
    assert tab("skeleton cluster logs --exclude node-01,@s", env) == ["stt"]
    assert tab("skeleton cluster daemon restart -n edge", env) == ["edge-1"]
    assert tab("skeleton clus", env) == ["cluster"]


def test_click_env_protocol(config: Path) -> None:
    done = subprocess.run(
        [str(BIN / "skeleton")], capture_output=True, text=True, timeout=60,
        env=env_for(config, _SKELETON_COMPLETE="bash_complete",
                    COMP_WORDS="skeleton cluster exec --node @", COMP_CWORD="4"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["plain,@failed", "plain,@web", "plain,@stt", "plain,@tts"]


def test_a_broken_config_completes_nothing_but_failed(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("nodes: [{id: 'bad id!', host: x}]\n")
    assert tab("skeleton cluster exec --node ", env_for(broken)) == ["@failed"]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on loopback that accepts connections and never says a word (a registry
    that hangs)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.solo  # compares two timings: the other workers must not stretch one of them
def test_a_hanging_registry_never_hangs_the_shell(config: Path, silent_server: int) -> None:
    def timed(env: Mapping[str, str]) -> tuple[list[str], float]:
        started = time.monotonic()
        candidates = tab("skeleton cluster exec --node ", env)
        return candidates, time.monotonic() - started

    _, without = timed(env_for(config))  # bash and two Python starts, on this machine now
    hanging = env_for(config,
                      SKELETON_DATABASE_URL=f"postgresql://u@127.0.0.1:{silent_server}/db")
    candidates, took = timed(hanging)
    assert candidates[:3] == ["node-01", "node-02", "edge-1"]  # the config's, in time
    # REGISTRY_WAIT is 0.3 s; libpq alone would wait its 2 s minimum connect timeout
    assert took - without < 1.2, (took, without)
