"""ops/jobs/node.py over a FakeRunner: what it sends (every value a quoted argument), how it
reads job.sh's replies (framing, base64 output, incomplete or garbled replies), how node
faults come back; and the node-side pocketsphinx entry point's refusal of a wrong format."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import shlex
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from skeleton_app.agent import pocketsphinx
from skeleton_app.config import BootstrapSettings, Settings
from skeleton_app.engines import DEFAULT_ENGINES, Engine
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.bootstrap import all_requires
from skeleton_app.ops.jobs import node as job_node
from skeleton_app.testing.fake import Call, FakeRunner, Reply, always

NODE = Node(id="linux-03", host="10.0.0.3", app_dir="/srv/skeleton app")
STT, TTS = DEFAULT_ENGINES


def _argv(call: Call) -> list[str]:
    return shlex.split(call.command)


def _ended(output: bytes = b"", *, code: int = 0, stderr: bytes = b"", size: int | None = None,
           truncated: str = "0", missing: str = "0") -> str:
    size = len(output) if size is None else size
    out = [f"state=ended\nexit_code={code}\nstarted=100.25\nended=101.75\n"
           f"output_size={size}\noutput_truncated={truncated}\noutput_missing={missing}\n"]
    out.append("--- begin stderr_tail\n" + base64.encodebytes(stderr).decode()
               + "--- end stderr_tail\n")
    if output:
        out.append("--- begin output\n" + base64.encodebytes(output).decode()
                   + "--- end output\n")
    return "".join(out)


def test_paths_and_render_quote_every_value() -> None:
    assert job_node.job_dir(NODE, 12, 2) == "/srv/skeleton app/jobs/12/a2"
    cmd = job_node.render(NODE, 12, 2, TTS, text="it's -x")
    assert shlex.split(cmd) == ["espeak-ng", "-v", "en-us", "-w",
                                "/srv/skeleton app/jobs/12/a2/tmp/output.wav", "--", "it's -x"]
    cmd = job_node.render(NODE, 12, 2, STT, input_name="a b.wav".replace(" ", "_"))
    assert "'/srv/skeleton app/jobs/12/a2/in/a_b.wav'" in cmd
    with pytest.raises(ValueError):
        job_node.input_path(NODE, 1, 1, "../etc/passwd")
    with pytest.raises(ValueError):
        job_node.input_path(NODE, 1, 1, ".hidden")


def test_start_sends_the_input_on_stdin_with_its_sha256() -> None:
    runner = FakeRunner(always(Reply(0, stdout="state=started pgid=4242\n")))
    data = b"RIFF\x00\x01"
    pgid = job_node.start(runner, NODE, 12, 2, "cat x; rm -rf /", input_name="a.wav",
                          input_data=data, timeout=30)
    assert pgid == 4242
    (call,) = runner.calls
    argv = _argv(call)
    assert argv[:2] == ["sh", "-c"] and argv[3:] == [
        "job.sh", "start", "/srv/skeleton app", "12", "2", "a.wav",
        hashlib.sha256(data).hexdigest(), "cat x; rm -rf /"]
    assert call.stdin == data


@pytest.mark.parametrize("reply", [
    Reply(1, stdout="state=error\nmessage=the input arrived damaged: sha256 ab, expected cd\n"),
    Reply(0, stdout="state=started pgid=1\n"),  # never a pgid of 0 or 1
    Reply(127, stderr="sh: 1: setsid: not found\n"),
])
def test_start_failures_are_local_node_errors(reply: Reply) -> None:
    with pytest.raises(NodeError) as err:
        job_node.start(FakeRunner(always(reply)), NODE, 3, 1, "true", input_name=None,
                       input_data=None, timeout=30)
    assert err.value.kind is NodeErrorKind.LOCAL and err.value.node == "linux-03"
    assert err.value.message.startswith("cannot start job 3 attempt 1: ")
    if reply.exit_code == 1:
        assert err.value.message.endswith("the input arrived damaged: sha256 ab, expected cd")


def test_unreachable_node_is_raised_as_is() -> None:
    runner = FakeRunner(always(NodeError(NodeErrorKind.UNREACHABLE, "no route to host")))
    with pytest.raises(NodeError) as err:
        job_node.wait(runner, NODE, 1, 1, engine=STT, slice_s=2, max_bytes=100)
    assert (err.value.kind, err.value.message) == (NodeErrorKind.UNREACHABLE, "no route to host")
    with pytest.raises(NodeError):
        job_node.kill(runner, NODE, 1, 1, pgid=77)


def test_wait_arguments_and_the_running_reply() -> None:
    runner = FakeRunner(always(Reply(0, stdout="state=running\n")))
    assert job_node.wait(runner, NODE, 5, 1, engine=TTS, slice_s=2.5, max_bytes=1000,
                         remove=True) is None
    assert _argv(runner.calls[0]) == ["sh", "-s", "--", "wait", "/srv/skeleton app", "5", "1",
                                      "2.5", "1000", "output.wav", "1"]
    job_node.wait(runner, NODE, 5, 1, engine=STT, slice_s=2, max_bytes=10)
    assert _argv(runner.calls[1])[-2:] == ["-", "0"]  # stdout output, kept


def test_wait_decodes_binary_output_and_the_stderr_tail() -> None:
    wav = bytes(range(256)) * 10
    runner = FakeRunner(always(Reply(0, stdout=_ended(wav, stderr=b"warn\xff\n"))))
    end = job_node.wait(runner, NODE, 5, 1, engine=TTS, slice_s=1, max_bytes=1 << 20)
    assert end == job_node.AttemptEnd(exit_code=0, output=wav, output_truncated=False,
                                      stderr_tail="warn\ufffd\n", seconds=1.5,
                                      output_size=len(wav))
    assert job_node.failure(end, TTS) is None


def test_failures_of_an_ended_attempt() -> None:
    def end(text: str) -> job_node.AttemptEnd:
        result = job_node.parse_wait(text, node="n", job_id=1, n=1)
        assert result is not None
        return result

    assert job_node.failure(end(_ended(code=2, stderr=b"a\nsox FAIL formats\n")), STT) == (
        "exit 2: sox FAIL formats")
    assert job_node.failure(end(_ended(missing="1")), TTS) == (
        "the command exited 0 but wrote no output file")
    assert job_node.failure(end(_ended(b"x" * 10, size=99, truncated="1")), STT, 10) == (
        "the output (99 bytes) is over the limit of 10 bytes")
    assert job_node.failure(end(_ended()), STT) is None  # an empty transcript is a transcript


@pytest.mark.parametrize(("text", "kind"), [
    ("state=lost\nmessage=the command of /x is gone without an exit status\n",
     NodeErrorKind.LOST),
    ("state=gone\nmessage=no attempt /x\n", NodeErrorKind.LOST),
    (_ended(b"abcdef")[:-40], NodeErrorKind.LOST),  # cut mid-output: never half a file
    ("state=ended\nexit_code=x\n", NodeErrorKind.ERROR),
    ("garbage", NodeErrorKind.ERROR),
    ("state=ended\nexit_code=0\n--- begin output\n!!!!\n--- end output\n", NodeErrorKind.ERROR),
])
def test_bad_or_lost_wait_replies(text: str, kind: NodeErrorKind) -> None:
    with pytest.raises(NodeError) as err:
        job_node.parse_wait(text, node="linux-03", job_id=4, n=2)
    assert err.value.kind is kind and err.value.node == "linux-03"
    assert err.value.message.startswith("job 4 attempt 2: ")


def test_kill_arguments_and_replies() -> None:
    runner = FakeRunner(always(Reply(0, stdout="state=killed pgid=77 signal=TERM\n")))
    job_node.kill(runner, NODE, 5, 1, pgid=77)
    job_node.kill(runner, NODE, 5, 1, pgid=None)
    assert _argv(runner.calls[0])[3:] == ["kill", "/srv/skeleton app", "5", "1", "77", "2.0"]
    assert _argv(runner.calls[1])[7] == ""
    refused = FakeRunner(always(Reply(1, stdout="state=error\nmessage=cannot remove /x\n")))
    with pytest.raises(NodeError) as err:
        job_node.kill(refused, NODE, 5, 1, pgid=77)
    assert err.value.message == "cannot kill job 5 attempt 1: cannot remove /x"


def test_preflight_one_line_per_node() -> None:
    runner = FakeRunner(always(Reply(0, stdout="missing_tool=espeak-ng\nstate=missing\n")))
    assert job_node.preflight(runner, NODE, TTS) == "espeak-ng is not installed on linux-03"
    assert _argv(runner.calls[0])[3:] == ["check", "/srv/skeleton app", "espeak-ng"]
    engine = Engine(name="w", role="stt", command="x {input}", input="audio",
                    tools=("ffmpeg",), requires=("faster-whisper>=1.0", "torch[cpu]"))
    runner = FakeRunner(always(Reply(0, stdout="missing_dist=faster-whisper\n"
                                                "missing_dist=torch\nstate=missing\n")))
    assert job_node.preflight(runner, NODE, engine) == (
        "faster-whisper, torch are not installed in linux-03's .venv (run `skeleton cluster"
        " bootstrap`)")
    assert _argv(runner.calls[0])[4:] == ["/srv/skeleton app", "ffmpeg", "--",
                                          "faster-whisper", "torch"]
    ok = FakeRunner(always(Reply(0, stdout="state=ok\n")))
    assert job_node.preflight(ok, NODE, STT) is None
    broken = FakeRunner(always(Reply(2, stdout="state=error\nmessage=bad\n")))
    assert job_node.preflight(broken, NODE, STT) == (
        "cannot check the engine's tools on linux-03: bad")


# ---------------------------------------------------------------- the pocketsphinx entry point


def _wav(rate: int, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setframerate(rate)
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.writeframes(b"\x00" * width * channels * 100)
    return buf.getvalue()


@pytest.mark.parametrize(("data", "said"), [
    (_wav(22050), "got 22050 Hz, 1 channel(s), 16-bit"),
    (_wav(16000, channels=2), "got 16000 Hz, 2 channel(s), 16-bit"),
    (_wav(16000, width=1), "got 16000 Hz, 1 channel(s), 8-bit"),
    (b"not a wav at all", "not a PCM WAV file"),
    (b"", "not a PCM WAV file"),
])
def test_pocketsphinx_refuses_anything_but_16k_mono_16bit(data: bytes, said: str) -> None:
    # As the node runs it: its own interpreter, the WAV on stdin.
    proc = subprocess.run([sys.executable, "-m", "skeleton_app.agent.pocketsphinx", "-"],
                          input=data, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pocketsphinx: ") and said in lines[0]


def test_pocketsphinx_reads_a_good_file_and_imports_no_more_of_the_app() -> None:
    assert len(pocketsphinx.read_pcm(io.BytesIO(_wav(16000)))) == 200
    source = Path(pocketsphinx.__file__).read_text()
    assert "skeleton_app" not in source.split('"""', 2)[2].replace(
        "skeleton_app.agent.pocketsphinx", "")
    proc = subprocess.run([sys.executable, "-m", "skeleton_app.agent.pocketsphinx"],
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stderr.decode().startswith("usage: ")


def test_bootstrap_installs_every_engines_requires_once() -> None:
    settings = Settings()
    assert all_requires(settings) == ("pocketsphinx",)  # the built-in stt's
    whisper = Engine(name="w", role="stt", command="x {input}", input="audio",
                     requires=("faster-whisper>=1", "numpy"))
    settings = dataclasses.replace(
        settings, bootstrap=BootstrapSettings(requires=("numpy", "pocketsphinx")),
        engines=(*DEFAULT_ENGINES, whisper))
    assert all_requires(settings) == ("numpy", "pocketsphinx", "faster-whisper>=1")
