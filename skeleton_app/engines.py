"""Engines: the kinds of voice work the cluster does (`stt`, `tts`, or any name), read from
config.yaml's `engines:` section, and the one place a command template becomes a command.

An engine is the role that serves it, a command template run in the node's app dir, what
its input is (an audio or other file, a text, or nothing) and where its output goes (the
command's stdout, or a file it writes at `{output}`). Placeholders: `{input}`, `{output}`,
`{text}`, `{job_dir}`; every value is shell-quoted when the template is rendered, so a
file name or a text never becomes shell syntax. `{{` and `}}` are literal braces.

The built-in `stt` and `tts` need no model download: pocketsphinx from PyPI (it ships an
English model; its wheel has no CLI, so the node runs our 20-line entry point
`skeleton_app.agent.pocketsphinx`) and Debian's espeak-ng. Measured: the default British
voice is not recognised by pocketsphinx's US model, `-v en-us` is; sox must resample with
`-R` (repeatable: no random dither) to the 16 kHz mono 16-bit that pocketsphinx needs; and
`--` keeps a text that starts with `-` from being read as an option (espeak-ng then exits 0
and writes nothing).
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from skeleton_app.errors import ConfigError, UsageError
from skeleton_app.nodes import ROLE_RE, shown

InputKind = Literal["audio", "file", "text", "none"]
OutputKind = Literal["stdout", "file"]
INPUT_KINDS: tuple[str, ...] = ("audio", "file", "text", "none")
OUTPUT_KINDS: tuple[str, ...] = ("stdout", "file")
PLACEHOLDERS = ("input", "output", "text", "job_dir")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._-")


@dataclass(frozen=True, slots=True)
class Engine:
    """One kind of work. Stored whole in every job's spec, so a job runs the way it was
    submitted even if config.yaml changes while it waits."""

    name: str
    role: str
    command: str
    input: InputKind = "file"
    output: OutputKind = "stdout"
    # The output file's suffix on the node and in `--out` (".wav" for tts).
    output_suffix: str = ".txt"
    tools: tuple[str, ...] = ()  # system commands the node needs (checked before routing)
    requires: tuple[str, ...] = ()  # pip requirements for the node's .venv (bootstrap)
    gpu_mem_mib: int = 0  # free GPU memory a node must have (0: no GPU needed)
    retry_on_exit: bool = False  # a non-zero exit is retried like a lost node
    timeout: float = 600.0  # seconds one attempt may run
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "command": self.command,
            "input": self.input, "output": self.output, "output_suffix": self.output_suffix,
            "tools": list(self.tools), "requires": list(self.requires),
            "gpu_mem_mib": self.gpu_mem_mib, "retry_on_exit": self.retry_on_exit,
            "timeout": self.timeout, "description": self.description,
        }

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any], *, source: str = "config") -> Engine:
        """Validate one engine (a config entry, or a job's stored spec); ConfigError says
        which key of which engine is wrong."""
        return _build(name, raw, source)

    def render(self, *, input_path: str | None = None, output_path: str | None = None,
               text: str | None = None, job_dir: str | None = None) -> str:
        """The shell command for one attempt, every placeholder shell-quoted."""
        values = {"input": input_path, "output": output_path, "text": text,
                  "job_dir": job_dir}
        out: list[str] = []
        for literal, name, _spec, _conv in string.Formatter().parse(self.command):
            out.append(literal)
            if name is None:
                continue
            value = values.get(name)
            if value is None:
                raise ValueError(f"engine {self.name}: no value for {{{name}}}")
            out.append(shlex.quote(value))
        return "".join(out)


DEFAULT_ENGINES: tuple[Engine, ...] = (
    Engine(
        name="stt", role="stt_batch", input="audio", output="stdout", output_suffix=".txt",
        command=("sox -R {input} -t wav -r 16000 -c 1 -b 16 -"
                 " | .venv/bin/python -m skeleton_app.agent.pocketsphinx -"),
        tools=("sox",), requires=("pocketsphinx",),
        description="speech to text with pocketsphinx (English model shipped in its wheel)",
    ),
    Engine(
        name="tts", role="tts", input="text", output="file", output_suffix=".wav",
        command="espeak-ng -v en-us -w {output} -- {text}", tools=("espeak-ng",),
        description="text to speech with espeak-ng",
    ),
)

_KEYS = {f for f in Engine.__dataclass_fields__ if f != "name"}


def _fail(source: str, key: str, msg: str) -> ConfigError:
    return ConfigError(msg, source=source, key=key)


def _build(name: str, raw: Mapping[str, Any], source: str) -> Engine:
    where = f"engines.{name}"
    if not isinstance(name, str) or not ROLE_RE.match(name):
        raise _fail(source, f"engines.{shown(name)}",
                    "invalid engine name: expected letters, digits, '.', '_', '-' (at most 63)")
    if not isinstance(raw, Mapping):
        raise _fail(source, where, f"expected a mapping, got {shown(raw)}")
    for key in raw:
        if key not in _KEYS:
            raise _fail(source, f"{where}.{shown(key)}",
                        f"unknown key (valid keys: {', '.join(sorted(_KEYS))})")
    kw: dict[str, Any] = {"name": name}
    for key in ("role", "command", "description"):
        if key in raw:
            if not isinstance(raw[key], str) or (key != "description" and not raw[key].strip()):
                raise _fail(source, f"{where}.{key}", f"expected a non-empty string, got"
                                                     f" {shown(raw[key])}")
            kw[key] = raw[key]
    for key in ("role", "command"):
        if key not in kw:
            raise _fail(source, f"{where}.{key}", "missing (every engine needs a role and a"
                                                  " command)")
    if not ROLE_RE.match(kw["role"]):
        raise _fail(source, f"{where}.role", f"invalid role {shown(kw['role'])}")
    for key, kinds in (("input", INPUT_KINDS), ("output", OUTPUT_KINDS)):
        if key in raw:
            if raw[key] not in kinds:
                raise _fail(source, f"{where}.{key}", f"expected one of {', '.join(kinds)},"
                                                      f" got {shown(raw[key])}")
            kw[key] = raw[key]
    if "output_suffix" in raw:
        suffix = raw["output_suffix"]
        if (not isinstance(suffix, str) or len(suffix) > 16
                or not (suffix == "" or (suffix.startswith(".") and len(suffix) > 1
                                         and set(suffix[1:]) <= _NAME_CHARS
                                         and ".." not in suffix))):
            raise _fail(source, f"{where}.output_suffix",
                        f"expected a file suffix such as .txt or .wav, got {shown(suffix)}")
        kw["output_suffix"] = suffix
    for key in ("tools", "requires"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip()
                                                      for v in value):
                raise _fail(source, f"{where}.{key}", f"expected a list of names, got"
                                                      f" {shown(value)}")
            if key == "tools":
                for tool in value:
                    if tool.startswith("-") or not set(tool) <= _NAME_CHARS | {"+"}:
                        raise _fail(source, f"{where}.tools", f"invalid tool name"
                                                              f" {shown(tool)}")
            kw[key] = tuple(value)
    if "gpu_mem_mib" in raw:
        value = raw["gpu_mem_mib"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(source, f"{where}.gpu_mem_mib", f"expected zero or more MiB, got"
                                                        f" {shown(value)}")
        kw["gpu_mem_mib"] = value
    if "retry_on_exit" in raw:
        if not isinstance(raw["retry_on_exit"], bool):
            raise _fail(source, f"{where}.retry_on_exit",
                        f"expected true or false, got {shown(raw['retry_on_exit'])}")
        kw["retry_on_exit"] = raw["retry_on_exit"]
    if "timeout" in raw:
        value = raw["timeout"]
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 < value <= 7 * 24 * 3600):
            raise _fail(source, f"{where}.timeout", f"expected seconds (more than 0, at most"
                                                    f" a week), got {shown(value)}")
        kw["timeout"] = float(value)
    engine = Engine(**kw)
    _check_template(engine, source)
    return engine


def _check_template(engine: Engine, source: str) -> None:
    key = f"engines.{engine.name}.command"
    try:
        fields = [(name, spec, conv) for _lit, name, spec, conv
                  in string.Formatter().parse(engine.command) if name is not None]
    except ValueError as exc:
        raise _fail(source, key, f"bad template: {exc} (write {{{{ and }}}} for braces)"
                    ) from None
    quoted = _quoted_placeholder(engine.command)
    if quoted:
        # Our quoting is made for a bare word: inside "..." a `$(...)` in a text would run,
        # and inside '...' a quote in a text would end the string.
        raise _fail(source, key, f"{{{quoted}}} is inside quotes: write it bare, every"
                                 " placeholder is shell-quoted for you")
    names = set()
    for name, spec, conv in fields:
        if name not in PLACEHOLDERS or spec or conv:
            raise _fail(source, key, f"unknown placeholder {{{shown(name, 30)}}}"
                                     f" (known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
        names.add(name)
    needs = {"audio": "input", "file": "input", "text": "text"}.get(engine.input)
    if needs and needs not in names:
        raise _fail(source, key, f"input is {engine.input} but the command has no {{{needs}}}")
    if engine.input in ("none", "text") and "input" in names:
        raise _fail(source, key, f"input is {engine.input}: the command cannot use {{input}}")
    if engine.input != "text" and "text" in names:
        raise _fail(source, key, "{text} needs input: text")
    if engine.output == "file" and "output" not in names:
        raise _fail(source, key, "output is file but the command has no {output}")
    if engine.output == "stdout" and "output" in names:
        raise _fail(source, key, "output is stdout: the command cannot use {output}"
                                 " (set output: file)")


def _quoted_placeholder(template: str) -> str | None:
    """The first placeholder that sits inside '...', "..." or `...` in `template`."""
    quote: str | None = None
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        escaped = False
        for ch in literal:
            if escaped:
                escaped = False
            elif ch == "\\" and quote != "'":
                escaped = True
            elif quote is None and ch in "'\"`":
                quote = ch
            elif ch == quote:
                quote = None
        if name is not None and (quote is not None or escaped):
            return name
    return None


def build_engines(raw: Any, source: str) -> tuple[Engine, ...]:
    """The built-in engines, replaced or extended by config.yaml's `engines:` mapping."""
    engines = {e.name: e for e in DEFAULT_ENGINES}
    if raw is None:
        return tuple(engines.values())
    if not isinstance(raw, Mapping):
        raise _fail(source, "engines", f"expected a mapping of engine names, got {shown(raw)}")
    for name, entry in raw.items():
        engines[name] = _build(name, entry, source)
    return tuple(engines.values())


def find_engine(engines: tuple[Engine, ...], name: str) -> Engine:
    """The engine called `name`; UsageError (exit 2) naming the known ones otherwise."""
    for engine in engines:
        if engine.name == name:
            return engine
    known = ", ".join(e.name for e in engines) or "(none)"
    raise UsageError(f"unknown engine {shown(name)} (known: {known}; or `run` for a command"
                     " of your own)")
