"""The conversation with the node's deploy helper (payloads/deploy.sh; its header states the
protocol): the lock, the digest it reports, then `begin`, `own` and `commit`.

Each step is a generator that yields what it needs from the transport (`Read` a line, `Send`
lines) and receives the helper's replies, as psycopg 3 writes its protocol: no I/O here, so
`drive` runs a conversation over a real `Session` (Connector.session, one SSH channel whose
stdin stays open for as long as the lock must be held) and `replay` runs it over a plain
list of reply lines in unit tests.

    talk = HelperTalk("node-01", lock_wait=10, timeout=30)
    granted = drive(talk.acquire(), session)      # Locked | Busy | HelperFailed
    refusal = drive(talk.begin(), session)        # None | "rsync-missing" | ...

What the node says decides the outcome; a reply outside the protocol raises
`HelperProtocolError` (naming the reply), a helper that exits while a reply is due raises
`HelperExited` (NodeError LOST).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from skeleton_app import payloads
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.ops.deploy.digest import DeployedDigest
from skeleton_app.ssh.runner import Session

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Read:
    """Wait up to `timeout` seconds for the helper's next line (None: it exited)."""

    timeout: float
    cancellable: bool = True


@dataclass(frozen=True, slots=True)
class Send:
    """Send these lines to the helper's stdin."""

    lines: tuple[str, ...]


Step = Read | Send
# Yields steps; a Read is answered with the line (None at EOF), a Send with None.
Conversation = Generator[Step, str | None, T]


class HelperExited(NodeError):
    """The helper exited while a reply was due: the channel, and so the lock, are gone."""

    def __init__(self, node: str, detail: str = ""):
        super().__init__(NodeErrorKind.LOST, f"the node's deploy helper exited early{detail}",
                         node=node)


class HelperProtocolError(NodeError):
    """The helper said something its protocol does not have (a broken or foreign deploy.sh,
    or noise on its stdout). The node answered, so it is a failed node (exit 1, LOCAL), as
    before this module existed, not an unreachable one."""

    def __init__(self, node: str, step: str, reply: str):
        super().__init__(NodeErrorKind.LOCAL, f"deploy helper: unexpected reply to {step}:"
                         f" {reply[:200]!r}", node=node)
        self.reply = reply


# ------------------------------------------------------------------ what `acquire` returns


@dataclass(frozen=True, slots=True)
class Locked:
    """The lock is ours; `previous` is the digest of the last deploy committed there."""

    previous: DeployedDigest


@dataclass(frozen=True, slots=True)
class Busy:
    """Another deploy held the lock for the whole wait. `holder`: "USER@HOST since TIME"."""

    holder: str


@dataclass(frozen=True, slots=True)
class HelperFailed:
    """The helper could not take the lock (cannot create the state dir, no flock, ...).
    `message` is None when it exited without a word (its stderr then says why)."""

    message: str | None


Granted = Locked | Busy | HelperFailed

_STATES = ("locked", "busy", "error")
_OWNER_RE = re.compile(r"^owner=(?P<owner>.*) since=(?P<since>\S+)$")


def helper_command(dest: str, lock_wait: float, owner: str, rsync: str = "rsync") -> str:
    """The command line that starts deploy.sh on a node (the script is `-c`: stdin carries
    the requests)."""
    return shlex.join(["sh", "-c", payloads.text("deploy.sh"), "skeleton-deploy", dest,
                       f"{lock_wait:g}", owner, rsync])


@dataclass(frozen=True, slots=True)
class HelperTalk:
    """The steps of one node's conversation. `lock_wait`: how long the helper waits for
    another deploy's lock; `timeout`: how long any answer may take beyond that (the helper
    answers in milliseconds: a node silent for this long is frozen or gone)."""

    node: str
    lock_wait: float
    timeout: float

    def acquire(self) -> Conversation[Granted]:
        """Read the header deploy.sh prints on start: the lock state, then (locked) the
        node's digest lines and `ready`."""
        header: list[str] = []
        line: str | None
        while True:
            line = yield Read(self.lock_wait + self.timeout)
            if line is None or line == "ready":
                break
            header.append(line)
        fields = [ln.partition("=") for ln in header]
        state = next((value for key, sep, value in fields if key == "state" and sep), None)
        if state == "busy":
            m = next((_OWNER_RE.match(ln) for ln in header if ln.startswith("owner=")), None)
            return Busy(f"{m['owner']} since {m['since']}" if m else "another deploy")
        if state == "error" or (state == "locked" and line is None) or (
                state is None and not header and line is None):
            message = next((value for key, _, value in fields if key == "message"), "")
            return HelperFailed(message or None)
        if state == "locked":
            return Locked(DeployedDigest.parse([value for key, _, value in fields
                                                if key == "digest"]))
        bad = next((ln for ln in header if not ln.startswith("state=")), None)
        raise HelperProtocolError(self.node, "the lock", f"state={state}" if state is not None
                                  else bad if bad is not None else str(line))

    def begin(self) -> Conversation[str | None]:
        """Record the owner, wait for an earlier writer, check rsync, remove the digest.
        None when done, else the helper's reason: rsync-missing, writer-busy, or its words."""
        reply = yield from self._request("begin", ["begin"])
        return _refusal(self.node, "begin", reply)

    def own(self) -> Conversation[None]:
        """Record the owner (a restart holds the lock for long even when nothing changes).
        Best effort: only a reply outside the protocol is an error."""
        reply = yield from self._request("own", ["own"])
        _refusal(self.node, "own", reply)

    def commit(self, digest: Sequence[str]) -> Conversation[str | None]:
        """Write `digest` as the node's new digest file. None when written, else what went
        wrong. Awaited even after a Ctrl-C: the result must say whether it was committed."""
        reply = yield from self._request("commit", ["commit", *digest, "."],
                                         cancellable=False)
        if reply != "ok" and not reply.startswith("error="):
            return f"the deploy helper sent an unexpected reply {reply[:200]!r}"
        return None if reply == "ok" else reply

    def _request(self, step: str, lines: Sequence[str], *,
                 cancellable: bool = True) -> Conversation[str]:
        yield Send(tuple(lines))
        reply = yield Read(self.timeout, cancellable)
        if reply is None:
            raise HelperExited(self.node)
        return reply


def _refusal(node: str, step: str, reply: str) -> str | None:
    if reply == "ok":
        return None
    if reply.startswith("error="):
        return reply[len("error="):]
    raise HelperProtocolError(node, step, reply)


# ------------------------------------------------------------------ drivers


def drive(conversation: Conversation[T], session: Session) -> T:
    """Run one step of the conversation over a live session (NodeError on a timeout, a lost
    channel or a cancel, as the session reports them)."""
    try:
        step = next(conversation)
        while True:
            if isinstance(step, Send):
                session.send(step.lines)
                step = conversation.send(None)
            else:
                line = session.read_line(step.timeout, cancellable=step.cancellable)
                step = conversation.send(line)
    except StopIteration as stop:
        result: T = stop.value
        return result
    except HelperExited as exc:
        # Its last words on stderr say why (a shell error, a killed flock).
        raise HelperExited(exc.node or "", session.stderr_tail()) from None


def replay(conversation: Conversation[T], replies: Iterable[str | None],
           sent: list[str] | None = None) -> T:
    """Run the conversation over scripted reply lines (for tests): each Read takes the next
    line, EOF after the last; the lines it sends are appended to `sent`."""
    lines = iter(replies)
    try:
        step = next(conversation)
        while True:
            if isinstance(step, Send):
                if sent is not None:
                    sent.extend(step.lines)
                step = conversation.send(None)
            else:
                step = conversation.send(next(lines, None))
    except StopIteration as stop:
        result: T = stop.value
        return result
