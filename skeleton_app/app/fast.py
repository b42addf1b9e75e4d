"""The `skeleton` entry point, with warm mode's fast path for `skeleton cluster exec`.

With a keeper running (skeleton_app/keeper), most of a warm command's time would be Python
starting and importing: Click and its help machinery, Rich, Paramiko, YAML, our own
modules. So the common form of `cluster exec` is handed whole to the keeper
(`keeper.thin`, which imports only the standard library): the keeper reads the command line
as the Click command does (`app.exec_argv`), runs the same application function on the
connections it holds (`keeper.served`) and sends back what to print and the exit code.
Anything else, or anything the keeper declines (another option, `--help`, a config error,
an environment other than the keeper's, no keeper answering), goes to the Click CLI
unchanged, which reports errors its way and starts a keeper when none answers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def _is_exec(words: Sequence[str]) -> bool:
    """`[-c PATH] cluster exec ...`: the only command the keeper may serve whole."""
    if len(words) >= 2 and words[0] in ("-c", "--config"):
        words = words[2:]
    return len(words) >= 3 and words[0] == "cluster" and words[1] == "exec"


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (`skeleton`, `python -m skeleton_app`): the keeper serves a warm
    `cluster exec` when it can, else the Click CLI (`app.cli.main`) runs with the same
    `argv`."""
    if argv is None and _is_exec(sys.argv[1:]):
        from skeleton_app.keeper import thin

        code = thin.run(sys.argv[1:])
        if code is not None:
            os._exit(code)  # everything is written (os.write); no teardown to pay for
    from skeleton_app.app.cli import main as cli_main

    cli_main(argv)
