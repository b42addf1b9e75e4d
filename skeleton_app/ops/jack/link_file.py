"""The JackTrip link records without a registry: a state file on the controller,
`$XDG_STATE_HOME/skeleton/jack-links.json` (else `~/.local/state/skeleton/jack-links.json`).

The same safe-file pattern as the last-run file (app/last_run.py): written mode 0600 through a
temporary file and a rename (a reader never sees half a file), read only when it is a regular
file (no symlink followed) owned by this user, not writable by others, in a directory no
other user may write. Each record is read through `record_from_mapping`: a bad one is
skipped with a warning; a file that is not ours at all is one clear error.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path

from skeleton_app.errors import UsageError
from skeleton_app.jack_link_records import LinkRecord, record_from_mapping

STATE_FILE = "jack-links.json"
_FORMAT = 1


def state_dir() -> Path:
    """$XDG_STATE_HOME/skeleton, else ~/.local/state/skeleton (a relative XDG_STATE_HOME is
    ignored, as the XDG base directory spec says)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "skeleton"


class FileLinkStore:
    """`LinkStore` over the state file (`directory`: its directory, default `state_dir()`)."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory or state_dir()

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self) -> tuple[tuple[LinkRecord, ...], tuple[str, ...]]:
        raw = self._read()
        good: list[LinkRecord] = []
        warnings: list[str] = []
        item: object
        for index, item in enumerate(raw):
            try:
                if not isinstance(item, dict):
                    raise ValueError("not an object")
                good.append(record_from_mapping(item))
            except ValueError as exc:
                warnings.append(f"{self.path}: link {index + 1} skipped: {exc}")
        return tuple(good), tuple(warnings)

    def put(self, record: LinkRecord) -> None:
        records, _ = self.load()
        kept = [r for r in records if not r.joins(record.hub, record.client)]
        self._write([*kept, record])

    def delete(self, a: str, b: str) -> bool:
        records, _ = self.load()
        kept = [r for r in records if not r.joins(a, b)]
        if len(kept) == len(records):
            return False
        self._write(kept)
        return True

    def close(self) -> None:
        pass

    # ---------------------------------------------------------------- the file

    def _write(self, records: list[LinkRecord]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = json.dumps({"format": _FORMAT, "links": [r.as_dict() for r in records]},
                          indent=1)
        fd, tmp = tempfile.mkstemp(prefix=".jack-links-", suffix=".tmp",
                                   dir=self.directory)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _read(self) -> list[object]:
        path = self.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the JackTrip links: {exc.strerror}"
                             " (a symlink is never followed)") from None
        try:
            problem = _not_private(fd, path.parent)
            if problem is not None:
                raise UsageError(f"{path}: {problem}: not used (delete it, or make it yours"
                                 " and not writable by others)")
            with os.fdopen(fd, encoding="utf-8") as fh:
                fd = -1
                text = fh.read(4 << 20)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the JackTrip links: {exc.strerror}"
                             ) from None
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(
                data.get("links"), list):
            raise UsageError(f"{path}: not a JackTrip links file of this version; delete it"
                             " (then `skeleton jack link` the links again)")
        links: list[object] = data["links"]
        return links


def _not_private(fd: int, directory: Path) -> str | None:
    """Why the open file (or its directory) may hold another user's words, or None."""
    uid = os.geteuid()
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not by you"
    if st.st_mode & 0o022:
        return "writable by other users"
    dst = os.stat(directory)
    if dst.st_uid != uid or dst.st_mode & 0o022:
        return f"its directory {directory} may be written by another user"
    return None
