"""rsync's argv: quoting for its `-e` splitter, the `-e` (rsh) command, the remote spec, probing
the local rsync for options, and `build_rsync_argv` (pure: no I/O but the probe)."""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterable, Sequence

from skeleton_app.errors import NodeError, NodeErrorKind, UsageError
from skeleton_app.transfers.output import OUT_FORMAT

# Relative, so rsync makes one per directory (an absolute one would put every file in a
# single directory: same-named files would collide) and adds a rule that keeps it from being
# sent or deleted by --delete.
DEFAULT_PARTIAL_DIR = ".~skeleton-partial~"

_RSYNC_SAFE = re.compile(r"^[A-Za-z0-9_./=:@,+%^-]+\Z")


def rsync_quote(arg: str) -> str:
    """Quote one word for rsync's `-e` splitter.

    rsync splits the `-e` value on spaces itself (no shell): single and double quotes group,
    a quote character is doubled to include it, and backslashes are literal (man rsync, -e).
    """
    if arg and _RSYNC_SAFE.match(arg):
        return arg
    return "'" + arg.replace("'", "''") + "'"


def rsh_command(argv: Sequence[str]) -> str:
    """The `-e` value that makes rsync run exactly `argv` (then the host and its own command)."""
    for word in argv:
        if "\0" in word:
            raise UsageError(f"NUL byte in an ssh argument: {word!r}")
    return " ".join(rsync_quote(word) for word in argv)


def remote_spec(host: str, path: str) -> str:
    """`host:path`, with brackets around an IPv6 address. The user travels in `-e` (`ssh -l`),
    so rsync never adds a `-l` of its own after our `--`."""
    if not path:
        raise UsageError("empty remote path")
    return f"[{host}]:{path}" if ":" in host else f"{host}:{path}"


@functools.lru_cache(maxsize=8)
def _rsync_help(binary: str) -> str:
    try:
        proc = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10,
                              check=False)
    except OSError as exc:
        raise NodeError(NodeErrorKind.LOCAL,
                        f"cannot run {binary!r} on this machine: {exc.strerror}") from exc
    return proc.stdout + proc.stderr


def supports(option: str, binary: str = "rsync") -> bool:
    """Does the local rsync know `option` (e.g. `--mkpath`, rsync 3.2.3+)?"""
    return re.search(rf"(^|[\s,]){re.escape(option)}\b", _rsync_help(binary), re.M) is not None


def protect_args_option(binary: str = "rsync") -> str:
    """`--secluded-args` where the installed rsync knows it (3.2.6+), else `--protect-args`."""
    text = _rsync_help(binary)
    if "--secluded-args" in text:
        return "--secluded-args"
    if "--protect-args" in text:
        return "--protect-args"
    raise NodeError(NodeErrorKind.LOCAL,
                    f"{binary} is too old: it cannot protect remote paths (need rsync >= 3.1)")


def build_rsync_argv(
    sources: Sequence[str],
    destination: str,
    *,
    rsh: Sequence[str] | None,
    exclude: Iterable[str] = (),
    filters: Iterable[str] = (),
    delete: bool = False,
    dry_run: bool = False,
    checksum: bool = False,
    compress: bool = True,
    partial_dir: str | None = DEFAULT_PARTIAL_DIR,
    io_timeout: int | None = None,
    progress: bool = False,
    protect_args: str | None = "--secluded-args",
    rsync_path: str | None = None,
    rsync_opts: Sequence[str] = (),
    binary: str = "rsync",
) -> list[str]:
    """The whole rsync argv (pure: no I/O). `rsync_opts` go after ours and before `--`."""
    if not sources:
        raise UsageError("rsync needs at least one source")
    argv = [
        binary,
        "--recursive", "--links", "--perms", "--times",
        # Compare times to the nanosecond (receiver rsync >= 3.1.3): by default rsync's
        # quick check sees a file rewritten within the same second, at the same size, as
        # unchanged, and a deploy would then skip new content.
        "--modify-window=-1",
        "--stats", f"--out-format={OUT_FORMAT}",
    ]
    if compress:
        argv.append("--compress")
    if partial_dir is not None:
        if not partial_dir or partial_dir.startswith("/"):
            # An absolute one would hold every file of the transfer in one directory.
            raise UsageError(f"partial dir must be a relative path, got {partial_dir!r}")
        argv += ["--delay-updates", f"--partial-dir={partial_dir}"]
    if rsh is not None:
        if protect_args:
            argv.append(protect_args)
        argv += ["-e", rsh_command(rsh)]
    if rsync_path:
        argv.append(f"--rsync-path={rsync_path}")
    if delete:
        argv.append("--delete")
    if dry_run:
        argv.append("--dry-run")
    if checksum:
        argv.append("--checksum")
    if io_timeout:
        argv.append(f"--timeout={int(io_timeout)}")
    if progress:
        argv.append("--info=progress2")
    argv += [f"--filter={rule}" for rule in filters]
    argv += [f"--exclude={pattern}" for pattern in exclude]
    argv += list(rsync_opts)
    argv.append("--")
    argv += list(sources)
    argv.append(destination)
    return argv


