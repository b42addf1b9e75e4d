"""The one reply framing of the node-side scripts (`payloads.framing`) and the payload loader:
key=value lines, blocks, missing keys, garbage that never raises; the prelude and
`invocation`."""

from __future__ import annotations

import pytest

from skeleton_app import payloads
from skeleton_app.ops.bootstrap import _values
from skeleton_app.ops.daemon import parse_reply
from skeleton_app.payloads import framing


def test_key_value_lines_and_blocks() -> None:
    frame = framing.parse("probe=skeleton-status/1\nload=0.1 0.2 0.3\n--- begin gpu\n"
                          "a=1 inside a block is text\n\n--- end gpu\nmessage=x = y \n")
    assert frame.get("probe") == "skeleton-status/1"
    assert frame.get("load") == "0.1 0.2 0.3"  # a value is the rest of the line
    assert frame.get("message") == "x = y "  # kept verbatim: callers strip when they mean to
    assert frame.block("gpu") == "a=1 inside a block is text\n"
    assert frame.get("a") is None  # block lines are never keys
    assert frame.values.keys() == {"probe", "load", "message"}


def test_repeated_keys_first_last_all() -> None:
    frame = framing.parse("message=one\nstate=x\nmessage=two\n")
    assert (frame.first("message"), frame.get("message")) == ("one", "two")
    assert frame.all("message") == ["one", "two"] and frame.values["message"] == "two"


def test_missing_keys_and_blocks_are_none() -> None:
    frame = framing.parse("state=running\n")
    assert frame.get("pid") is None and frame.first("pid") is None and frame.all("pid") == []
    assert frame.block("body") is None


def test_a_block_cut_off_keeps_what_arrived() -> None:
    frame = framing.parse("gpu_exit=9\n--- begin gpu\nNVIDIA-SMI has failed\n")
    assert frame.block("gpu") == "NVIDIA-SMI has failed"


@pytest.mark.parametrize("text", [
    "", "\n\n", "garbage\n", "=value\n", "Key=upper case key\n", "9x=digit first\n",
    "with space=1\n", "--- end gpu\n", "--- begin \n", "\x00\x1b[31m=\udcff\n",
    "state=\n", "a" * 100000, "--- begin x\n--- begin y\n--- end y\n",
])
def test_garbage_never_raises(text: str) -> None:
    frame = framing.parse(text)
    assert isinstance(frame, framing.Frame)
    for key, _value in frame.pairs:
        assert key and key[0].islower()
    # And the replies built on it say "error" or "unknown" rather than raising.
    assert parse_reply(text).state in ("error", "")
    assert isinstance(_values(text), dict)


def test_status_line_fields() -> None:
    assert framing.fields("state", "stopped pid=7 signal=KILL") == {
        "state": "stopped", "pid": "7", "signal": "KILL"}
    assert framing.fields("state", "running junk Pid=3 pid=4") == {"state": "running",
                                                                  "pid": "4"}
    assert framing.fields("state", None) == {} and framing.fields("state", "  ") == {}


def test_daemon_reply_through_the_framing() -> None:
    reply = parse_reply("state=died pid=42\nmessage=exited\nmessage=again\n"
                        "--- begin log_tail\nmessage=not a message\nboom\n--- end log_tail\n")
    assert (reply.state, reply.pid, reply.message) == ("died", 42, "exited; again")
    assert reply.log_tail == ("message=not a message", "boom")
    assert parse_reply("state=running pid=x²\n").pid is None


def test_bootstrap_values_first_key_wins_and_are_stripped() -> None:
    assert _values("python=Python 3.11.2 \nversion=3.11.2\npython=again\n") == {
        "python": "Python 3.11.2", "version": "3.11.2"}


# ---- the loader ----------------------------------------------------------------------------


def test_prelude_goes_in_front_of_the_scripts_that_ask_for_it() -> None:
    prelude = payloads.data(payloads.PRELUDE)
    for name in ("status.sh", "daemon.sh"):
        assert payloads.data(name).startswith(prelude + payloads.USES_PRELUDE.encode() + b"\n")
    for name in ("health.sh", "bootstrap.sh", "deploy.sh"):
        assert not payloads.data(name).startswith(prelude)
        assert payloads.USES_PRELUDE not in payloads.text(name)


def test_invocation_quotes_every_argument() -> None:
    command, stdin = payloads.invocation("health.sh", "1.0", "http://h/x y", "$(reboot)")
    assert command == "sh -s -- 1.0 'http://h/x y' '$(reboot)'"
    assert stdin == payloads.data("health.sh")
    with pytest.raises(ValueError):
        payloads.invocation("../etc/passwd.sh")
