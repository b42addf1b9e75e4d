"""The node-side speech-to-text entry point of the built-in `stt` engine:
`python -m skeleton_app.agent.pocketsphinx FILE|-` prints the transcript of a WAV file (or of
the WAV on stdin) on one line.

The PyPI `pocketsphinx` wheel ships an English model but no `pocketsphinx` command, so the
node runs this. It imports nothing else from skeleton_app: it runs in the node's .venv, where
only what the decode needs should load. Input must be 16 kHz mono 16-bit PCM (the model's
rate: fed anything else the decode is garbage, measured); anything else is refused with one
line on stderr and exit 1, so the engine's sox step must resample (`sox -R ... -r 16000 -c 1
-b 16`).
"""

from __future__ import annotations

import sys
import wave
from typing import BinaryIO

RATE, CHANNELS, WIDTH = 16000, 1, 2
USAGE = "usage: python -m skeleton_app.agent.pocketsphinx FILE|-  (16 kHz mono 16-bit WAV)"


def read_pcm(src: str | BinaryIO) -> bytes:
    """The PCM frames of a 16 kHz mono 16-bit WAV; ValueError with one line otherwise."""
    try:
        with wave.open(src, "rb") as w:
            fmt = (w.getframerate(), w.getnchannels(), w.getsampwidth())
            if fmt != (RATE, CHANNELS, WIDTH):
                raise ValueError(
                    f"pocketsphinx needs 16 kHz mono 16-bit PCM WAV, got {fmt[0]} Hz,"
                    f" {fmt[1]} channel(s), {8 * fmt[2]}-bit (resample with"
                    " `sox -R IN -r 16000 -c 1 -b 16 OUT.wav`)")
            return w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a PCM WAV file: {exc or 'empty input'}") from None


def transcribe(pcm: bytes) -> str:
    """The best hypothesis for 16 kHz mono 16-bit PCM ("" when nothing was recognised)."""
    from pocketsphinx import Decoder  # the model loads here (~0.4 s)

    decoder = Decoder(samprate=RATE, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    src: str | BinaryIO = sys.stdin.buffer if args[0] == "-" else args[0]
    try:
        pcm = read_pcm(src)
    except OSError as exc:
        print(f"pocketsphinx: cannot read {args[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"pocketsphinx: {exc}", file=sys.stderr)
        return 1
    try:
        text = transcribe(pcm)
    except ImportError:
        print("pocketsphinx: the pocketsphinx package is not installed in this Python"
              f" ({sys.prefix})", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
