"""One cancellation mechanism for the whole library: a process-wide token.

    from skeleton_app import cancel
    cancel.cancel()          # from a signal handler, another thread, or `Cluster.cancel()`

Everything that waits on a node polls or waits on `TOKEN`: fan-out starts no new node once it
is set, a running command's process group gets SIGINT, then SIGTERM, then SIGKILL through SSH
"signal" requests (`ssh.channel.drive`), local rsync/ssh children are stopped
(`on_cancel` callbacks), long loops stop between steps. A node stopped this way is reported as
`interrupted` (`NodeErrorKind.INTERRUPTED`); nodes that had already finished keep their results.

The CLI sets the token on the first Ctrl-C. A Python program gets the same on
KeyboardInterrupt: the thread pools that wait for nodes (`stop_on_interrupt`) set the token,
wait for their workers to stop the nodes, clear it again and re-raise; the program can then
run the next operation. Clean-up steps that must reach a node even after a cancel (closing a
deploy lock, removing a sync's run dir) pass `cancellable=False` to `Connector.run`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["INTERRUPTED", "TOKEN", "CancelToken", "cancel", "cancelled", "die_with_parent",
           "executor", "reset", "scoped", "token"]

# What a node stopped by a cancel says (its error message starts with this).
INTERRUPTED = "stopped by Ctrl-C"


class CancelToken:
    """A flag that many threads poll, wait on, or select() on (`fileno`), plus callbacks run
    once when it is set (to stop local child processes at once)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._final: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._pipe: tuple[int, int] | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to `timeout` seconds, waking at once on a cancel. True if cancelled."""
        return self._event.wait(timeout)

    def fileno(self) -> int:
        """A descriptor that becomes readable when the token is set: select() on it next to
        a channel or a pipe, never read it."""
        with self._lock:
            if self._pipe is None:
                self._pipe = os.pipe()
                for fd in self._pipe:
                    os.set_blocking(fd, False)  # reset() drains it; cancel() never waits
                if self._event.is_set():
                    os.write(self._pipe[1], b"x")
            return self._pipe[0]

    def cancel(self) -> None:
        """Set the token. Safe from a signal handler: the callbacks run in a thread of their
        own (a handler interrupts the main thread, which may hold our lock)."""
        if self._event.is_set():
            return
        self._event.set()
        threading.Thread(target=self._fire, daemon=True, name="cancel").start()

    def _fire(self) -> None:
        with self._lock:
            if self._pipe is not None and self._event.is_set():  # not if reset() came first
                with contextlib.suppress(BlockingIOError):
                    os.write(self._pipe[1], b"x")
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            with contextlib.suppress(Exception):  # one failing stop must not skip the rest
                callback()

    def close(self) -> None:
        """Close the select() pipe (a token made per request, as the keeper does, must not
        leak two descriptors per command)."""
        with self._lock:
            pipe, self._pipe = self._pipe, None
        for fd in pipe or ():
            with contextlib.suppress(OSError):
                os.close(fd)

    def reset(self) -> None:
        """Clear the token (after an interrupted operation has wound down)."""
        with self._lock:
            self._event.clear()
            if self._pipe is not None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._pipe[0], 64):
                        pass

    @contextlib.contextmanager
    def on_cancel(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run `callback` once if the token is set while the block runs (at once if it is
        already set)."""
        with self._lock:
            key = self._next
            self._next += 1
            self._callbacks[key] = callback
        if self._event.is_set():
            with contextlib.suppress(Exception):
                callback()
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.pop(key, None)


    @contextlib.contextmanager
    def on_exit(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run `callback` if the process is made to exit while the block runs (a second
        Ctrl-C, `last_words`): the last chance to stop a node's command (a SIGKILL request)
        when there is no time left for the polite sequence."""
        with self._lock:
            key = self._next
            self._next += 1
            self._final[key] = callback
        try:
            yield
        finally:
            with self._lock:
                self._final.pop(key, None)

    def last_words(self, timeout: float = 0.3) -> None:
        """Run every `on_exit` callback, in a thread of its own (this may be a signal
        handler, interrupting a thread that holds a lock they need), for at most `timeout`
        seconds in all."""
        callbacks = list(self._final.values())  # a copy without the lock: see above

        def run() -> None:
            for callback in callbacks:
                with contextlib.suppress(Exception):
                    callback()

        worker = threading.Thread(target=run, daemon=True, name="last-words")
        worker.start()
        worker.join(timeout)


TOKEN = CancelToken()

# The keeper (skeleton_app/keeper/server.py) serves many clients in one process: each request
# waits on a token of its own, so that one client's Ctrl-C stops only its commands. The SSH
# code asks `token()` which one applies to the calling thread.
_scoped = threading.local()


def token() -> CancelToken:
    """The token the calling thread obeys: its `scoped` one, else the process-wide TOKEN."""
    own: CancelToken | None = getattr(_scoped, "token", None)
    return TOKEN if own is None else own


@contextlib.contextmanager
def scoped(own: CancelToken) -> Iterator[None]:
    """Make `own` the calling thread's token while the block runs."""
    previous = getattr(_scoped, "token", None)
    _scoped.token = own
    try:
        yield
    finally:
        _scoped.token = previous


def cancel() -> None:
    TOKEN.cancel()


def cancelled() -> bool:
    return TOKEN.cancelled


def reset() -> None:
    TOKEN.reset()


@contextlib.contextmanager
def executor(max_workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose waiting thread turns KeyboardInterrupt into a cancel.

    `with ThreadPoolExecutor()` would wait on exit for every worker to finish by itself (a
    remote `sleep 25` included) before the interrupt got anywhere. Here the token is set
    first, the workers stop their nodes and return, the token is cleared again if this
    interrupt set it, and the KeyboardInterrupt goes on up.
    """
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
    try:
        yield pool
    except KeyboardInterrupt:
        owner = not TOKEN.cancelled
        TOKEN.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if owner:
            TOKEN.reset()
        raise
    finally:
        pool.shutdown(wait=True)



_prctl: Any = None


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for our rsync/ssh children: the kernel sends them SIGTERM when this
    process dies, even by SIGKILL (Linux PR_SET_PDEATHSIG), so that no transfer goes on
    writing to a node after its deploy lock or its sync run is gone (rsync stops its own ssh
    on SIGTERM). prctl is looked up here, in the parent: the child, between fork and exec,
    only calls it."""
    global _prctl
    if _prctl is None:
        import ctypes

        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # not Linux: no such guarantee there
            _prctl = False
    prctl, parent = _prctl, os.getpid()

    def preexec() -> None:
        if prctl:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died before prctl took effect: no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


_PR_SET_PDEATHSIG = 1
