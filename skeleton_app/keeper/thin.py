"""Warm mode's client for `skeleton cluster exec`: the whole command handed to the keeper.

The `skeleton` entry point (`app.fast`) calls `run` before it loads anything else of ours.
This module imports os, sys, struct and the C modules under socket and signal (`_socket`,
`_signal`: their Python wrappers import `enum`, ~4 ms), and `locate` and `protocol` (JSON
through `_json`): no Click, Rich, Paramiko, YAML, dataclasses or `re`. The keeper reads the
command line, loads the config, runs the command on the connections it holds and sends back
the text to print and the exit code (`served`).

`run` returns None, and the Click CLI runs the command instead (starting a keeper when none
answers), when no keeper is there, when it does not answer within BUDGET (then
`bypassed` is set: the CLI does not wait for it a second time), or when it declines. Once
the keeper said "started", the command is the keeper's: Ctrl-C is passed on as "cancel" (a
second one exits at once, and the keeper stops the nodes' commands), and a keeper that goes
away or falls silent for SILENCE seconds is each node's `lost`, exit 4, as on the Click path.
"""

from __future__ import annotations

import _signal
import _socket
import os
import struct
import sys

from skeleton_app.keeper import locate, protocol

TYPE_CHECKING = False  # not typing's: one import less on the warm path
if TYPE_CHECKING:
    from typing import Any

BUDGET = 0.1  # seconds for the keeper to take the request (a wedged one is bypassed)
SILENCE = 10.0  # seconds without a frame once started: the keeper is lost
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

# Set when a keeper was there but did not answer in time: the Click path that runs the
# command now (client.KeeperRunner) bypasses it at once and starts a replacement.
bypassed = False


def run(argv: list[str]) -> int | None:
    """Hand `skeleton <argv>` (a `cluster exec`) to the keeper; its exit code, after
    printing what the command prints, or None when the keeper did not take it."""
    if (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") != "utf8":
        return None  # the keeper sends UTF-8; Click prints in this locale's encoding
    try:
        directory = locate.base_dir(os.environ)
        locate.check_dir(directory)
        sock = _connect(os.path.join(directory, locate.SOCKET))
    except (locate.UnsafeDir, OSError):
        return None
    try:
        return _hand_over(sock, argv, directory)
    except KeyboardInterrupt:
        # Ctrl-C before "started" (the keeper still reading the config, listing the nodes
        # from the registry): nothing ran, and the keeper sees us go. As the Click CLI says.
        os.write(2, b"skeleton: interrupted\n")
        return 130
    finally:
        sock.close()


def _hand_over(sock: _socket.socket, argv: list[str], directory: str) -> int | None:
    """Send the command; None unless the keeper takes it ("taking" within BUDGET) and
    starts it (its nodes selected)."""
    global bypassed
    try:
        protocol.send(sock, {"op": "exec", "v": protocol.VERSION, "argv": argv,
                             "cwd": os.getcwd(), "env": dict(os.environ),
                             "groups": sorted({os.getgid(), *os.getgroups()}),
                             "package": _package()})
        reply, _ = protocol.receive(sock)
    except TimeoutError:
        bypassed = True
        return None
    except (OSError, protocol.ProtocolError):
        return None
    if reply.get("op") != "taking":
        return None
    try:
        sock.settimeout(SILENCE)
        reply, _ = protocol.receive(sock)
    except (OSError, protocol.ProtocolError):
        return None  # nothing ran: the keeper went away while it read the config
    if reply.get("op") != "started":
        return None
    return _follow(sock, reply, directory)


def _package() -> str:
    import skeleton_app

    return os.path.realpath(os.path.dirname(skeleton_app.__file__))


def _connect(path: str) -> _socket.socket:
    """A connection to the keeper at `path`; OSError unless it is served by our uid (our
    commands go to it). The caller closes it."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(BUDGET)
        sock.connect(path)
        uid = _PEERCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED,
                                               _PEERCRED.size))[1]
        if uid != os.getuid():
            raise ConnectionRefusedError(f"{path} is served by uid {uid}")
    except BaseException:
        sock.close()
        raise
    return sock


def _follow(sock: _socket.socket, started: dict[str, Any], directory: str) -> int:
    """The command's frames to "done": its output written as it comes, its exit code."""
    interrupted = False

    def on_sigint(_signum: int, _frame: object) -> None:
        nonlocal interrupted
        if interrupted:
            os.write(2, b"skeleton: interrupted again: exiting now\n")
            os._exit(130)  # the keeper sees us go and stops the nodes' commands
        interrupted = True
        os.write(2, b"skeleton: interrupted: stopping the work on the nodes"
                    b" (Ctrl-C again to quit at once)\n")
        try:  # noqa: SIM105 (contextlib is one more import on the warm path)
            protocol.send(sock, {"op": "cancel"})
        except OSError:
            pass

    _signal.signal(_signal.SIGINT, on_sigint)
    while True:
        try:
            header, payload = protocol.receive(sock)
        except TimeoutError:
            return _lost(started, directory, f"said nothing for {SILENCE:g}s")
        except (OSError, protocol.ProtocolError) as exc:
            return _lost(started, directory, f"went away ({exc})")
        op = header.get("op")
        if op == "out":
            if not _write(1, payload):
                return 1  # the reader went away (`| head -1`): Click's EPIPE policy
        elif op == "done":
            _write(2, str(header.get("stderr", "")).encode("utf-8", "surrogateescape"))
            from skeleton_app.app.stdout_pipe import reader_gone

            if reader_gone():
                return 1
            code = header.get("code")
            return code if isinstance(code, int) else 1


def _write(fd: int, data: bytes) -> bool:
    """All of `data` to `fd`; False when its reader went away or it cannot take more (a
    full disk, `> /dev/full`: one line says why, never a traceback)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return False
        except OSError as exc:
            if fd != 2:
                _write(2, f"skeleton: error: cannot write the output: {exc.strerror}\n".encode())
            return False
    return True


def _lost(started: dict[str, Any], directory: str, why: str) -> int:
    """The keeper is gone mid-command: every node's `lost` (it may have run), printed as
    the Click path prints it; a new keeper is started for the next command."""
    from pathlib import Path

    from skeleton_app.app.views.exec import exec_text
    from skeleton_app.errors import NodeErrorKind
    from skeleton_app.keeper import spawn
    from skeleton_app.keeper.paths import KeeperPaths
    from skeleton_app.results import ClusterResult, failure

    nodes = [str(n) for n in started.get("nodes", [])]
    result: ClusterResult[Any] = ClusterResult(
        [failure(n, NodeErrorKind.LOST, f"the connection keeper {why} mid-command; the"
                 " command may have run") for n in nodes], operation="exec")
    exec_text(result, sys.stdout)
    sys.stdout.flush()
    persist = started.get("persist")
    if isinstance(persist, (int, float)) and persist > 0:
        spawn.start(KeeperPaths(Path(directory)), float(persist))
    return int(result.exit_code())
