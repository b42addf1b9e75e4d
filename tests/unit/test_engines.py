"""skeleton_app/engines.py: templates are checked when config.yaml is read, and every value
is one shell word when a command is rendered."""

from __future__ import annotations

import subprocess

import pytest

from skeleton_app.engines import DEFAULT_ENGINES, Engine, find_engine
from skeleton_app.errors import ConfigError, UsageError

TTS = {"role": "tts", "input": "text", "output": "file"}


@pytest.mark.parametrize("command", [
    'espeak-ng -w {output} "{text}"',
    "espeak-ng -w {output} '{text}'",
    "espeak-ng -w {output} `echo {text}`",
    'espeak-ng -w "$HOME/{output}" {text}',
])
def test_a_placeholder_inside_quotes_is_refused(command: str) -> None:
    # In "..." our quoting would leave `$(...)` in a text live; in '...' it ends the string.
    with pytest.raises(ConfigError, match="inside quotes: write it bare"):
        Engine.from_dict("x", {**TTS, "command": command})


def test_rendered_values_are_one_word_each() -> None:
    engine = Engine.from_dict("x", {**TTS, "command": "printf '%s|' {text} {output}"})
    hostile = "$(touch /tmp/pwned) `id`; rm -rf / 'q' \"d\" -x\nline"
    cmd = engine.render(text=hostile, output_path="/tmp/a b")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
    assert out == f"{hostile}|/tmp/a b|"


@pytest.mark.parametrize(("raw", "message"), [
    ({"role": "r", "command": "x {input}", "input": "audio", "output": "stdout", "foo": 1},
     "unknown key"),
    ({"role": "r", "command": "x {nope}"}, "unknown placeholder"),
    ({"role": "r", "command": "x", "input": "audio"}, "has no {input}"),
    ({"role": "r", "command": "x {text}", "input": "text", "output": "file"}, "has no {output}"),
    ({"role": "r", "command": "x {input} {output}", "input": "file", "output": "stdout"},
     "cannot use {output}"),
    ({"command": "x {input}"}, "missing"),
])
def test_bad_engines_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Engine.from_dict("x", raw)


def test_built_in_engines_and_unknown_names() -> None:
    assert find_engine(DEFAULT_ENGINES, "stt").role == "stt_batch"
    with pytest.raises(UsageError, match="unknown engine 'nope'"):
        find_engine(DEFAULT_ENGINES, "nope")


def test_the_readme_templates_load() -> None:
    # README's "Engines" section is what users copy: every template there must pass the checks.
    import re
    from pathlib import Path

    import yaml

    from skeleton_app.engines import build_engines

    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("\n## Engines"):]
    section = section[:section.find("\n## ", 1)]
    names: list[str] = []
    for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and "engines" in data:
            names += [e.name for e in build_engines(data["engines"], "README")]
    assert {"whisper", "faster-whisper", "vosk", "piper"} <= set(names)
