"""`cluster bootstrap`: give every node what the daemon needs, `<app_dir>/.venv` with the
project and its dependencies, installed from wheels built here (nodes need no internet).

1. wheelhouse, once, on the controller: `pip wheel` of the deployed project (`deploy.source`
   when it holds a pyproject.toml or setup.py, else the installed skeleton-app release) and
   of `bootstrap.requires` and every engine's `requires` (`all_requires`). With a wheelhouse
   (`--wheelhouse DIR`, `bootstrap.wheelhouse`) pip looks only there (`--no-index
   --find-links DIR`): a controller without internet, like the test suite's; without one,
   pip's own defaults (PyPI). The project is built from a copy of
   its tree, so the deployed tree never gets setuptools' build/ and *.egg-info. The result is
   cached under $XDG_CACHE_HOME/skeleton_app/ by source digest and inputs: an unchanged
   project is not built again.
2. per node, in parallel (payloads/bootstrap.sh):
   - probe, one round trip: the node's Python (version, implementation, machine, libc) and
     the digest of its last bootstrap. Same digest: nothing else happens ("up to date").
     A Python older than a wheel's Requires-Python, or a wheel whose tags this interpreter
     cannot load (another CPU, Python version or libc): one clear line, nothing is sent.
   - push: rsync of the wheelhouse to `.venv/.skeleton-wheels/` (kept inside the venv, which
     deploy never touches).
   - install: `python3 -m venv --without-pip`, then pip, run from its pushed wheel,
     `install --no-index --find-links` (pip included), then the digest is written to
     `.venv/.skeleton-bootstrap`. A node needs python3 and nothing else (not even Debian's
     python3-venv).

The digest covers every wheel's name and RECORD (the hashes of the files it installs, so a
rebuilt but identical project wheel counts as unchanged), the extra requirements and the
interpreter name.

Each node's outcome is a `BootstrapOutcome` (state, the node's Python, the digest, a one-line
message); the replies of bootstrap.sh are in the payload framing (`payloads.framing`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from skeleton_app import payloads
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import UsageError
from skeleton_app.nodes import Node
from skeleton_app.payloads import framing
from skeleton_app.results import ClusterResult, NodeResult
from skeleton_app.transfers import rsync
from skeleton_app.transfers.tree import cache_dir, tree_digest, walk_tree

VENV = ".venv"
WHEELS_DIR = ".venv/.skeleton-wheels"  # relative to the app dir
DISTRIBUTION = "skeleton-app"
_DIGEST_FORMAT = "skeleton-bootstrap/1"
# Never part of the project's build, besides what deploy leaves out: build leftovers, tool
# caches (they change on every run and would defeat the wheelhouse cache) and wheelhouses.
_BUILD_EXCLUDES = ("build/", "dist/", "*.egg-info/", ".skeleton-deploy/", ".wheelhouse/",
                   ".pytest_cache/", ".mypy_cache/", ".ruff_cache/")
_MANYLINUX_ALIASES = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_PIP_TIMEOUT = 900.0  # seconds for `pip wheel` on the controller (downloads included)


# ------------------------------------------------------------------------ the wheelhouse


@dataclass(frozen=True, slots=True)
class Wheel:
    """One built wheel: its file name, tags and Requires-Python."""

    file: str
    name: str
    requires_python: str | None
    tags: tuple[tuple[str, str, str], ...]  # (python, abi, platform), expanded
    record: str  # sha256 of its RECORD (of the file itself when it has none)


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    """The wheels every node installs from, and what pip installs."""

    dir: str
    wheels: tuple[Wheel, ...]
    project: Wheel
    pip: Wheel
    requires: tuple[str, ...]
    python: str
    digest: str


def build_wheelhouse(settings: Settings, *, source: str | os.PathLike[str] | None = None,
                     wheelhouse: str | os.PathLike[str] | None = None) -> Wheelhouse:
    """Build (or find in the cache) the wheels of the project and its dependencies.
    UsageError when pip cannot build them: nothing has been sent anywhere."""
    boot = settings.bootstrap
    find_links = _find_links(wheelhouse if wheelhouse is not None else boot.wheelhouse,
                             "--wheelhouse" if wheelhouse is not None else "bootstrap.wheelhouse",
                             settings.source)
    project = _project_dir(settings, source)
    excludes = (*settings.deploy.exclude, *_BUILD_EXCLUDES)
    requires = all_requires(settings)
    key = _cache_key(project, excludes, requires, find_links)
    out = cache_dir() / f"wheelhouse-{key}"
    if not (out / ".complete").is_file():
        _build(out, project, excludes, requires, find_links)
    return _describe(out, requires, boot.python, project is None)


def all_requires(settings: Settings) -> tuple[str, ...]:
    """`bootstrap.requires`, then the `requires` of every configured engine (pocketsphinx for
    the built-in stt), each once: the nodes run the engines from their own .venv."""
    seen = dict.fromkeys(settings.bootstrap.requires)
    for engine in settings.engines:
        seen.update(dict.fromkeys(engine.requires))
    return tuple(seen)


def _find_links(value: str | os.PathLike[str] | None, what: str,
                config_file: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    if what.startswith("bootstrap.") and not path.is_absolute() and config_file:
        path = Path(config_file).resolve().parent / path
    if not path.is_dir():
        raise UsageError(f"{what}: {os.fspath(path)!r} is not a directory")
    return os.path.abspath(path)


def _project_dir(settings: Settings, source: str | os.PathLike[str] | None) -> str | None:
    """The deployed tree when it is a Python project (what the nodes run), else None: the
    installed skeleton-app release is what the nodes get."""
    path = Path(source if source is not None else settings.deploy.source)
    if source is None and not path.is_absolute() and settings.source:
        path = Path(settings.source).resolve().parent / path
    if source is not None and not path.is_dir():
        raise UsageError(f"--source: {os.fspath(path)!r} is not a directory")
    if any((path / name).is_file() for name in ("pyproject.toml", "setup.py")):
        return os.path.abspath(path)
    return None


def _cache_key(project: str | None, excludes: Sequence[str], requires: Sequence[str],
               find_links: str | None) -> str:
    parts: list[Any] = [_DIGEST_FORMAT, sys.version, list(requires), find_links]
    if project is None:
        parts.append(metadata.version(DISTRIBUTION))
    else:
        parts += [project, tree_digest(project, excludes).hex]
    if find_links:
        # New wheels dropped into the wheelhouse may change what pip picks.
        parts.append(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                            for e in os.scandir(find_links) if e.is_file()))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _build(out: Path, project: str | None, excludes: Sequence[str], requires: Sequence[str],
           find_links: str | None) -> None:
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheelhouse-", dir=out.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        target = f"{DISTRIBUTION}=={metadata.version(DISTRIBUTION)}"
        if project is not None:
            target = str(Path(tmp) / "project")
            _copy_tree(project, target, excludes)
        argv = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check",
                "--no-input", "--wheel-dir", str(wheels)]
        if find_links:
            argv += ["--no-index", "--find-links", find_links]
        argv += [target, "pip", *requires]  # pip: the nodes install with it
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UsageError(f"bootstrap: cannot run pip wheel: {exc}") from None
        if proc.returncode != 0:
            raise UsageError(f"bootstrap: pip wheel failed: {_last_error(proc.stderr)}"
                             + ("" if find_links else " (no internet? pass --wheelhouse DIR)"))
        (wheels / ".complete").write_text("")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(wheels, out)


def _copy_tree(src: str, dst: str, excludes: Sequence[str]) -> None:
    """The project as deploy sees it, into `dst`; a build there leaves `src` untouched."""
    os.makedirs(dst)
    for rel, st, full in walk_tree(src, excludes):
        target = os.path.join(dst, rel)
        if stat.S_ISDIR(st.st_mode):
            os.makedirs(target, exist_ok=True)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(full), target)
        else:
            shutil.copy2(full, target)


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and "is ignored" not in ln and not ln.startswith("WARNING")]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


def _describe(out: Path, requires: Sequence[str], python: str, release: bool) -> Wheelhouse:
    wheels = tuple(_read_wheel(p) for p in sorted(out.glob("*.whl")))
    wanted = _normalize(DISTRIBUTION)
    project = next((w for w in wheels if w.name == wanted), None)
    pip = next((w for w in wheels if w.name == "pip"), None)
    if project is None or pip is None:
        raise UsageError(f"bootstrap: no {'pip' if project else DISTRIBUTION} wheel was built"
                         f" in {out}" + (" (the installed release)" if release else ""))
    h = hashlib.sha256(_DIGEST_FORMAT.encode())
    for w in wheels:
        h.update(f"\0{w.file}\0{w.record}".encode())
    h.update(json.dumps([list(requires), python]).encode())
    # The project first: its Requires-Python is the one a user knows.
    ordered = (project, *(w for w in wheels if w is not project))
    return Wheelhouse(dir=str(out), wheels=ordered, project=project, pip=pip,
                      requires=tuple(requires),
                      python=python, digest=h.hexdigest())


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _read_wheel(path: Path) -> Wheel:
    parts = path.name[:-len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise UsageError(f"bootstrap: not a wheel file name: {path.name}")
    py, abi, plat = parts[-3:]
    tags = tuple((p, a, pl) for p in py.split(".") for a in abi.split(".")
                 for pl in plat.split("."))
    requires_python = None
    record = ""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith(".dist-info/METADATA") and name.count("/") == 1:
                text = zf.read(name).decode("utf-8", "replace")
                m = re.search(r"^Requires-Python:\s*(.+?)\s*$", text, re.MULTILINE)
                requires_python = m.group(1) if m else None
            elif name.endswith(".dist-info/RECORD") and name.count("/") == 1:
                record = hashlib.sha256(zf.read(name)).hexdigest()
    if not record:
        record = hashlib.sha256(path.read_bytes()).hexdigest()
    return Wheel(file=path.name, name=_normalize(parts[0]), requires_python=requires_python,
                 tags=tags, record=record)


# ------------------------------------------------------------------------ node's Python


@dataclass(frozen=True, slots=True)
class NodePython:
    """What the probe learnt about a node's interpreter."""

    banner: str  # what `python3 --version` printed
    impl: str = ""
    version: tuple[int, ...] = ()
    machine: str = ""
    libc: str = ""  # "glibc 2.36", "" for musl or unknown
    abi: str = ""  # sys.abiflags

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> NodePython:
        version = tuple(int(x) for x in values.get("version", "").split(".") if x.isdigit())
        if not version:  # the probe code did not run: an old or odd interpreter
            m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", values.get("python", ""))
            version = tuple(int(x) for x in m.groups() if x is not None) if m else ()
        return cls(banner=values.get("python", ""), impl=values.get("impl", ""),
                   version=version, machine=values.get("machine", ""),
                   libc=values.get("libc", "").strip(), abi=values.get("abi", ""))

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) or "unknown"

    def describe(self) -> str:
        libc = f", {self.libc}" if self.libc else ""
        return f"{self.impl or 'python'} {self.version_text}, {self.machine or '?'}{libc}"


def satisfies(version: Sequence[int], spec: str) -> bool:
    """Whether `version` meets a Requires-Python specifier (`>=3.11`, `>=3.8,!=3.9.*`)."""
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        m = re.fullmatch(r"(~=|===|==|!=|<=|>=|<|>)\s*([0-9][0-9.]*)(\.\*)?", clause)
        if m is None:
            continue  # a form we do not know: pip will judge it
        op, text, star = m.group(1), m.group(2).rstrip("."), m.group(3)
        want = tuple(int(x) for x in text.split("."))
        have = tuple(version[:len(want)]) if star or op in ("==", "!=", "===") else \
            tuple(version)
        pad = max(len(want), len(have))
        w, h = want + (0,) * (pad - len(want)), have + (0,) * (pad - len(have))
        ok = {"==": h == w, "===": h == w, "!=": h != w, "<": h < w, "<=": h <= w,
              ">": h > w, ">=": h >= w,
              "~=": h >= w and tuple(version[:len(want) - 1]) == want[:-1]}[op]
        if not ok:
            return False
    return True


def fits(wheel: Wheel, py: NodePython) -> bool:
    """Whether some tag of `wheel` can be installed by this interpreter (PEP 425/600)."""
    return any(_tag_fits(tag, py) for tag in wheel.tags)


def _tag_fits(tag: tuple[str, str, str], py: NodePython) -> bool:
    pytag, abi, plat = tag
    major, minor = (*py.version, 0, 0)[:2]
    m = re.fullmatch(r"(py|cp|pp)(\d)(\d*)", pytag)
    if m is None:
        return False
    kind, tag_major, tag_minor = m.group(1), int(m.group(2)), m.group(3)
    if tag_major != major or (kind == "cp" and py.impl != "cpython"):
        return False
    if kind == "pp" and py.impl != "pypy":
        return False
    exact = kind == "cp" and abi != "abi3"
    if tag_minor and (int(tag_minor) != minor if exact else int(tag_minor) > minor):
        return False
    if abi not in ("none", "abi3") and abi != f"cp{major}{minor}{py.abi}":
        return False
    return _platform_fits(plat, py)


def _platform_fits(plat: str, py: NodePython) -> bool:
    if plat == "any":
        return True
    arch = py.machine
    if not arch or not plat.endswith("_" + arch):
        return False
    base = plat[:-len(arch) - 1]
    if base == "linux":
        return True
    glibc = re.fullmatch(r"glibc (\d+)\.(\d+)", py.libc)
    if base in _MANYLINUX_ALIASES:
        need = _MANYLINUX_ALIASES[base]
    elif m := re.fullmatch(r"manylinux_(\d+)_(\d+)", base):
        need = (int(m.group(1)), int(m.group(2)))
    else:
        return False  # musllinux, macosx, win: not a glibc Linux node
    return glibc is not None and (int(glibc.group(1)), int(glibc.group(2))) >= need


def check_python(house: Wheelhouse, py: NodePython) -> str | None:
    """Why this interpreter cannot install the wheelhouse (one line), or None."""
    for w in house.wheels:
        if w.requires_python and not satisfies(py.version, w.requires_python):
            return (f"Python {py.version_text} is too old: {w.name.replace('_', '-')} needs"
                    f" Python {w.requires_python} (install a newer python3 on the node, or set"
                    " bootstrap.python)")
    for w in house.wheels:
        if not fits(w, py):
            return (f"the wheel {w.file} does not fit this node's Python ({py.describe()}):"
                    " build the wheelhouse on a machine like the nodes")
    return None


# ------------------------------------------------------------------------ the operation


@dataclass(frozen=True, slots=True)
class BootstrapOutcome:
    """One node's bootstrap: `state` installed, up-to-date or failed; `python` the node's
    interpreter version (None when it was never learnt); `message` why it failed."""

    state: str
    python: str | None
    digest: str
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "python": self.python, "digest": self.digest,
                "message": self.message}


def bootstrap(
    cluster: Cluster,
    nodes: Sequence[Node],
    *,
    source: str | os.PathLike[str] | None = None,
    wheelhouse: str | os.PathLike[str] | None = None,
    force: bool = False,
    fanout: int | None = None,
    on_result: Callable[[NodeResult[BootstrapOutcome]], None] | None = None,
) -> ClusterResult[BootstrapOutcome]:
    """Make or update `<app_dir>/.venv` on every node, in parallel (bounded by fanout).

    Per node result: exit 0 installed or up to date (`outcome.state`: "installed" or
    "up-to-date"); exit 1 when the node's Python cannot take the wheels or pip failed there
    (`outcome.message`, one line); `errors` when unreachable. `force` installs even where
    the digest says up to date. UsageError (nothing sent) when the wheels cannot be built.
    """
    house = build_wheelhouse(cluster.settings, source=source, wheelhouse=wheelhouse)
    return cluster.map(lambda node: _bootstrap_node(cluster, node, house, force), nodes,
                       fanout=fanout, operation="bootstrap", on_result=on_result)


def _bootstrap_node(cluster: Cluster, node: Node, house: Wheelhouse,
                    force: bool) -> NodeResult[BootstrapOutcome]:
    from skeleton_app.ssh.runner import RunOptions

    started = time.monotonic()

    def done(state: str, py: NodePython | None, message: str = "",
             code: int = 0) -> NodeResult[BootstrapOutcome]:
        outcome = BootstrapOutcome(state=state, python=py.version_text if py else None,
                                   digest=house.digest, message=message)
        return NodeResult(node=node.id, exit_code=code, duration=time.monotonic() - started,
                          stderr=message + "\n" if message else "", outcome=outcome)

    command, script = payloads.invocation("bootstrap.sh", "probe", node.app_dir, house.python)
    probe = cluster.connector.run(node, command, RunOptions(timeout=60, stdin=script))
    if not probe.ok:
        return probe if probe.error_kind else done(
            "failed", None, f"probe failed: {_tail(probe.stderr or probe.stdout)}", 1)
    values = _values(probe.stdout)
    if values.get("python") == "missing":
        return done("failed", None, f"{house.python} is not installed on {node.id}"
                    " (needed to make the virtualenv)", 1)
    py = NodePython.parse(values)
    problem = check_python(house, py)
    if problem is not None:
        return done("failed", py, problem, 1)
    if values.get("digest") == house.digest and not force:
        return done("up-to-date", py)
    failed = _push(cluster, node, house) or _install(cluster, node, house)
    if isinstance(failed, NodeResult):
        return failed
    return done("failed", py, failed[1], failed[0]) if failed else done("installed", py)


# A step's failure: the node's result when it could not run (unreachable, lost), else
# (exit code, one-line message); None when it went well.
_StepFailure = NodeResult[Any] | tuple[int, str] | None


def _push(cluster: Cluster, node: Node, house: Wheelhouse) -> _StepFailure:
    """The wheelhouse to the node's `.venv/.skeleton-wheels/` (rsync; stale wheels go)."""
    from skeleton_app.ssh.runner import RunOptions

    wheels = posixpath.join(node.app_dir, WHEELS_DIR)
    made = cluster.connector.run(node, shlex.join(["mkdir", "-p", "--", wheels]),
                                 RunOptions(timeout=60))
    if not made.ok:
        return made if made.error_kind else (1, f"cannot create {wheels}: {_tail(made.stderr)}")
    sent = rsync(node, house.dir + "/", wheels + "/", settings=cluster.settings.ssh,
                 exclude=[".complete"], delete=True, compress=False,
                 io_timeout=int(cluster.settings.ssh.op_timeout))
    if not sent.ok:
        return (sent.exit_code or 1, f"pushing the wheels failed: {sent.error_message(1)}")
    return None


def _install(cluster: Cluster, node: Node, house: Wheelhouse) -> _StepFailure:
    """bootstrap.sh install: the venv, pip from its wheel, the project; then the digest."""
    from skeleton_app.ssh.runner import RunOptions

    command, script = payloads.invocation(
        "bootstrap.sh", "install", node.app_dir, house.python, house.digest, house.pip.file,
        house.project.file, *house.requires)
    install = cluster.connector.run(
        node, command, RunOptions(timeout=cluster.settings.ssh.op_timeout, stdin=script))
    if install.error_kind is not None:
        return install
    values = _values(install.stdout)
    if install.exit_code != 0 or values.get("state") != "installed":
        message = values.get("message") or _tail(install.stderr) or "install failed"
        return (install.exit_code or 1, message)
    return None


def _values(text: str) -> dict[str, str]:
    """The reply's keys; the first of a repeated key wins."""
    values: dict[str, str] = {}
    for key, value in framing.parse(text).pairs:
        values.setdefault(key, value.strip())
    return values


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""
