"""PID 1 of a skeleton test host: `files.py` copies this file to STATE/host-init.py.

Run as `python -I -S STATE/host-init.py NS MARKER WANT_FILE SSHD...` (a file rather than `-c`
keeps `ps` readable; NS and MARKER are only there so that /proc/PID/cmdline names the process
as ours). It starts sshd, reaps every orphan (daemons started over SSH end up here), and on
SIGUSR1 makes sshd match WANT_FILE ("running"/"stopped", for fault injection). A file plus
one signal, rather than one signal per action, because pending signals coalesce and are
taken lowest number first: "stop" then "start" sent back to back could otherwise be applied
in the wrong order. SIGTERM ends the host (the kernel then kills every process in it).

Standard library only, and nothing runs on import: the hosts run it with `-I -S`, outside
any virtualenv.
"""

from __future__ import annotations

import os
import signal
import sys
import time

WATCHED = {signal.SIGCHLD, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}


class _Init:
    """The sshd listener this PID 1 keeps running (or stopped) as WANT_FILE says."""

    def __init__(self, want_file: str, sshd: list[str]) -> None:
        self.want_file = want_file
        self.sshd = sshd
        self.child = 0  # the sshd listener, 0 when none runs

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.child = 0

    def wanted(self) -> bool:
        try:
            with open(self.want_file) as fh:
                return fh.read().strip() != "stopped"
        except OSError:
            return True

    def start(self) -> None:
        pid = os.fork()
        if pid == 0:
            try:
                for sig in WATCHED:
                    signal.signal(sig, signal.SIG_DFL)
                # Python ignores these at startup; sessions must get the defaults back.
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.setsid()
                os.execv(self.sshd[0], self.sshd)
            finally:
                os._exit(127)
        self.child = pid

    def stop(self) -> None:
        # Only the listener: its sessions live on, as with `systemctl stop ssh`.
        os.kill(self.child, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while self.child and time.monotonic() < deadline:
            time.sleep(0.01)
            self.reap()
        if self.child:
            os.kill(self.child, signal.SIGKILL)
            while self.child:
                time.sleep(0.01)
                self.reap()

    def reconcile(self) -> None:
        self.reap()
        if self.wanted() and not self.child:
            self.start()
        elif not self.wanted() and self.child:
            self.stop()


def main(argv: list[str]) -> None:
    init = _Init(want_file=argv[3], sshd=argv[4:])
    for watched in WATCHED:
        # The kernel drops signals that PID 1 has no handler for, even blocked ones.
        signal.signal(watched, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    init.reconcile()
    while True:
        sig = signal.sigwait(WATCHED)
        if sig == signal.SIGCHLD:
            init.reap()
        elif sig == signal.SIGUSR1:
            init.reconcile()
        else:
            sys.exit(0)


if __name__ == "__main__":
    main(sys.argv)
