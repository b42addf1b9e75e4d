"""The JackTrip link records without a registry: a state file on the controller,
`$XDG_STATE_HOME/skeleton/jack-links.json` (else `~/.local/state/skeleton/jack-links.json`).

Written and read as the last-run file is (skeleton_app/state_files.py): mode 0600 through a
temporary file and a rename, read only when it is a private regular file of this user. Each
record is read through `record_from_mapping`: a bad one is skipped with a warning; a file
that is not ours at all is one clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

from skeleton_app.errors import UsageError
from skeleton_app.jack_link_records import LinkRecord, record_from_mapping
from skeleton_app.state_files import read_private, state_dir, write_private

STATE_FILE = "jack-links.json"
_FORMAT = 1


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
        write_private(self.path, json.dumps(
            {"format": _FORMAT, "links": [r.as_dict() for r in records]}, indent=1))

    def _read(self) -> list[object]:
        path = self.path
        text = read_private(path, "the JackTrip links")
        if text is None:
            return []
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
