"""The jobs case's peers: GNU parallel over SSH, and a naive round-robin ssh loop.

Both reach the hosts the way the other peers do (OpenSSH with the testbed's ssh_config:
same key, same known_hosts, strict host-key checking), one fresh ssh per job (what either
tool does by default), and both get the slots our dispatcher gets: `slots` jobs at once per
host (GNU parallel: `-S SLOTS/host`; the loop: SLOTS lanes per host).

- GNU parallel, as the issue writes it: `parallel -S host1,... --transferfile {} --return
  {.}.txt --cleanup CMD`, with `--workdir` the app dir, so the command runs where our
  engine's does (relative `.venv/bin/python`) and the files go there and back.
- the loop: job i goes to host i mod N, each lane runs its jobs one after the other; the
  audio goes in on the ssh's stdin and the transcript comes back on its stdout.

The transcription command is our `stt` engine's own template (config.yaml's `engines:`),
rendered for the file: both peers run exactly what our dispatcher runs on the node.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bench.measure import BenchError, Command
from bench.peers import Hosts
from skeleton_app.engines import Engine

PARALLEL = "GNU parallel -S (ssh per job)"
PARALLEL_M = "GNU parallel -S --controlmaster"
ROUND_ROBIN = "round-robin ssh loop"
APP_DIR = "/home/skeleton/app"  # the testbed hosts' app dir (testing.testbed.state.APP_DIR)
WORDS = "hello world"
_SENTINEL = "BENCHINPUT"  # rendered unquoted (safe characters), then replaced


def is_gnu_parallel() -> bool:
    """True when `parallel` is GNU parallel (moreutils ships another tool of that name)."""
    try:
        proc = subprocess.run(["parallel", "--version"], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.stdout.startswith("GNU parallel")


def install_parallel(log: Path) -> None:
    """`apt-get install parallel` unless GNU parallel is here (./scripts/setup installs it)."""
    if is_gnu_parallel():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as out:
        cmd = ["apt-get", "install", "-y", "-q", "parallel"]
        if subprocess.run(cmd, stdout=out, stderr=out, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], stdout=out, stderr=out, env=env)
            subprocess.run(cmd, stdout=out, stderr=out, env=env)
    if not is_gnu_parallel():
        raise BenchError(f"GNU parallel is not installed (apt-get install parallel; see {log})")


def version() -> str:
    try:
        out = subprocess.run(["parallel", "--version"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return out.splitlines()[0] if out else "not installed"


def _ssh(h: Hosts) -> str:
    return f"ssh -F {shlex.quote(str(h.ssh_config))}"


def _sshlogins(h: Hosts, slots: int) -> str:
    return ",".join(f"{slots}/{ip}" for ip in h.ips)


def _parallel(h: Hosts, slots: int) -> list[str]:
    # --will-cite: no citation notice. Everything else is GNU parallel's default.
    return ["parallel", "--will-cite", "--ssh", _ssh(h), "-S", _sshlogins(h, slots)]


# ------------------------------------------------------------------ no-op jobs


def noop_commands(h: Hosts, jobs: int, slots: int) -> dict[str, Command]:
    """`true` `jobs` times over the hosts, for each peer (and GNU parallel once more with
    its `--controlmaster`: one ssh master per host, as our dispatcher keeps connections)."""
    # -N0: take one argument per job but do not append it (the job is `true` alone).
    args = ("-N0", "true", ":::", *map(str, range(jobs)))
    par = Command((*_parallel(h, slots), *args), h.env(), timeout=900)
    par_m = Command((*_parallel(h, slots), "--controlmaster", *args), h.env(), timeout=900)
    loop = Command(("bash", "-c", _round_robin_noop(h, jobs, slots)), h.env(), timeout=900)
    return {PARALLEL: par, PARALLEL_M: par_m, ROUND_ROBIN: loop}


def _lanes(h: Hosts, slots: int) -> str:
    """bash: `hosts=(...)`, `lanes`, and `run_lanes` starting `lane L` for every lane and
    failing if any lane failed. Job i belongs to lane i mod lanes, on host i mod N."""
    return (f"hosts=({' '.join(shlex.quote(ip) for ip in h.ips)}); n={len(h.ips)};"
            f" lanes=$((n * {slots})); ssh_={shlex.quote(_ssh(h))};"
            " run_lanes() { pids=; for l in $(seq 0 $((lanes - 1))); do lane $l &"
            " pids=\"$pids $!\"; done; rc=0; for p in $pids; do wait $p || rc=1; done;"
            " return $rc; };")


def _round_robin_noop(h: Hosts, jobs: int, slots: int) -> str:
    return (_lanes(h, slots)
            + f" lane() {{ i=$1; while [ $i -lt {jobs} ]; do"
              " $ssh_ ${hosts[$((i % n))]} true || return 1; i=$((i + lanes)); done; };"
              " run_lanes")


# ------------------------------------------------------------------ transcriptions


def stt_command_for(engine: Engine, name: str) -> str:
    """The engine's command for the input file `name` (a plain relative name)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise BenchError(f"unexpected input name {name!r}")
    return engine.render(input_path=_SENTINEL).replace(_SENTINEL, name)


def stt_commands(h: Hosts, engine: Engine, wav_dir: Path, wavs: Sequence[str],
                 slots: int) -> dict[str, Command]:
    """Transcribe every file of `wavs` (names in `wav_dir`) into NAME.txt next to it."""
    if engine.output != "stdout":
        raise BenchError(f"engine {engine.name}: output is {engine.output}, the peers need"
                         " stdout")
    # GNU parallel quotes what it puts in for {} itself: it goes in bare.
    par_cmd = stt_command_for(engine, "BENCHFILE").replace("BENCHFILE", "{}") + " > {.}.txt"
    par = Command((*_parallel(h, slots), "--workdir", APP_DIR, "--transferfile", "{}",
                   "--return", "{.}.txt", "--cleanup", par_cmd, ":::", *wavs),
                  h.env(), cwd=str(wav_dir), timeout=1800)
    # The loop: the file in on the ssh's stdin (under a name of its own, removed after),
    # the transcript out on its stdout.
    remote = []
    for i, name in enumerate(wavs):
        tmp = f"rr-{i}-{name}"
        remote.append(f"cd {APP_DIR} && cat > {tmp} && {{ {stt_command_for(engine, tmp)}; }};"
                      f" rc=$?; rm -f {tmp}; exit $rc")
    script = (_lanes(h, slots)
              + f" files=({' '.join(shlex.quote(w) for w in wavs)});"
              + f" cmds=({' '.join(shlex.quote(c) for c in remote)});"
              + " lane() { i=$1; while [ $i -lt ${#files[@]} ]; do f=${files[$i]};"
                " $ssh_ ${hosts[$((i % n))]} \"${cmds[$i]}\" < $f > ${f%.wav}.txt"
                " || return 1; i=$((i + lanes)); done; }; run_lanes")
    loop = Command(("bash", "-c", script), h.env(), cwd=str(wav_dir), timeout=1800)
    return {PARALLEL: par, ROUND_ROBIN: loop}


def make_wavs(directory: Path, count: int, text: str = WORDS) -> list[str]:
    """`count` WAVs of espeak-ng saying `text` (US voice, which pocketsphinx recognises);
    one is made, the others are copies under their own names."""
    if not shutil.which("espeak-ng"):
        raise BenchError("espeak-ng is not installed (apt-get install espeak-ng)")
    directory.mkdir(parents=True, exist_ok=True)
    first = directory / "say-00.wav"
    proc = subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(first), "--", text],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not first.is_file() or first.stat().st_size == 0:
        raise BenchError(f"espeak-ng failed: {proc.stderr.strip()[:300]}")
    names = [first.name]
    for i in range(1, count):
        name = f"say-{i:02d}.wav"
        shutil.copyfile(first, directory / name)
        names.append(name)
    return names


def clear_outputs(directory: Path) -> None:
    for txt in directory.glob("*.txt"):
        txt.unlink()


def recognised(texts: Sequence[str], words: str = WORDS) -> int:
    """How many transcripts contain `words` (the robust part of what was said)."""
    return sum(1 for t in texts if words in " ".join(t.lower().split()))


def read_outputs(directory: Path, wavs: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in wavs:
        path = directory / (name.removesuffix(".wav") + ".txt")
        out.append(path.read_text(errors="replace") if path.is_file() else "")
    return out
