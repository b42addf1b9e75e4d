"""Ctrl-C for a `skeleton cluster` command of the Click CLI: the first one cancels the work
on the nodes, the second exits at once (a command the keeper serves: `keeper.thin`, which
says the same and passes the cancel on)."""

from __future__ import annotations


def install_sigint() -> None:
    """First Ctrl-C: cancel (every node's command is stopped, the command reports and exits
    130). Second: exit at once. Written with os.write: the handler interrupts the main
    thread, which may be inside a write to the same stream."""
    import os
    import signal

    from skeleton_app import cancel
    from skeleton_app.errors import ExitCode

    def on_sigint(_signum: int, _frame: object) -> None:
        if cancel.cancelled():
            os.write(2, b"skeleton: interrupted again: exiting now\n")
            cancel.TOKEN.last_words()  # a SIGKILL to every command still running on a node
            os._exit(ExitCode.INTERRUPTED)
        os.write(2, b"skeleton: interrupted: stopping the work on the nodes"
                    b" (Ctrl-C again to quit at once)\n")
        cancel.cancel()

    signal.signal(signal.SIGINT, on_sigint)
