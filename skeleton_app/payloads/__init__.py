"""The node-side shell payloads and the one loader for them.

Every `*.sh` here runs on a node under `sh`. They use only POSIX sh and coreutils: a stock
node has nothing else.

Sending is one way: `invocation(name, *args)` gives the command `sh -s -- ARGS` (every
argument quoted) and the script as the bytes for the channel's stdin, so nothing is left on
the node and nothing in the script is ever part of a command line.

The shared prelude: a script whose FIRST line is exactly `# uses: prelude` gets the text of
`prelude.sh` put in front of it by `data`/`text` (status.sh and daemon.sh: the pid checks
that decide "is our daemon running" must never disagree between them). That is the only
include mechanism; nothing else is spliced. A script without the marker is sent as it is.

Replies: the scripts answer in one framing (`skeleton_app.payloads.framing`): `key=value`
lines and `--- begin NAME` / `--- end NAME` blocks; status.sh, daemon.sh, health.sh and
bootstrap.sh all use it, and `framing.parse` is their one parser. One form remains beside it:
daemon.sh and health.sh put their status line's fields on one line
(`state=stopped pid=7 signal=KILL`, `state=healthy url=URL`); `framing.fields` splits that
line. Turning it into one key per line would change the reply every script test and the
controller-side tests read, for no gain. deploy.sh, logs.sh and models.sh (other owners)
keep their own line protocols.
"""

from __future__ import annotations

import shlex
from functools import cache
from importlib import resources

PRELUDE = "prelude.sh"
USES_PRELUDE = "# uses: prelude"


@cache
def data(name: str) -> bytes:
    """The payload `name` (e.g. "status.sh") as bytes, as it is sent (prelude included),
    read once per process."""
    raw = _file(name)
    if raw.split(b"\n", 1)[0] == USES_PRELUDE.encode():
        return _file(PRELUDE) + raw
    return raw


def text(name: str) -> str:
    """The payload `name` as text (for `sh -c`)."""
    return data(name).decode("utf-8")


def invocation(name: str, *args: str) -> tuple[str, bytes]:
    """(command, stdin) to run the payload `name` with `args` on a node: `sh -s -- ARGS`
    with the script on stdin."""
    return "sh -s -- " + shlex.join(args), data(name)


def _file(name: str) -> bytes:
    if "/" in name or not name.endswith(".sh"):
        raise ValueError(f"not a payload name: {name!r}")
    return (resources.files(__name__) / name).read_bytes()
