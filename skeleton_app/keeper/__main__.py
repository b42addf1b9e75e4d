"""`python -m skeleton_app.keeper serve --dir DIR --persist SECONDS`: the keeper process
(started by `skeleton_app.keeper.spawn`, not by hand)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skeleton_app.keeper.paths import KeeperPaths, check_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skeleton_app.keeper")
    parser.add_argument("action", choices=["serve"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--persist", required=True, type=float)
    args = parser.parse_args(argv)
    check_dir(args.dir)
    from skeleton_app.keeper import server  # Paramiko: the keeper's, not its parser's

    return server.main(KeeperPaths(args.dir), max(args.persist, 1.0))


if __name__ == "__main__":
    sys.exit(main())
