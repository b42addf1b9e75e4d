"""Import Paramiko without Invoke: ~50 ms off every `skeleton cluster` command.

`paramiko.config` imports Invoke (Fabric's task runner, which pulls in `unittest.mock` and
`asyncio`) for one purpose: running the command of a `Match exec` block of an ssh_config.
Our hot paths drive Paramiko transports directly and never need Fabric or Invoke, so this
module imports Paramiko with Invoke held back and gives `paramiko.config` a stand-in that
imports Invoke the first time a `Match exec` is evaluated. Importing Fabric later (for
`Cluster.connection()`, `group()`, tasks.py, fabfile.py) imports Invoke for real, as usual.

Import this module before anything imports Paramiko; if Paramiko or Invoke is loaded
already, it does nothing.
"""

from __future__ import annotations

import sys
from typing import Any


class _LazyInvoke:
    """Stands in for the `invoke` module inside `paramiko.config`."""

    def __getattr__(self, name: str) -> Any:
        import invoke

        return getattr(invoke, name)


if "paramiko" not in sys.modules and "invoke" not in sys.modules:
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` fails
    try:
        import paramiko.config
    finally:
        del sys.modules["invoke"]
    if getattr(paramiko.config, "invoke", False) is None:  # the ImportError branch ran
        paramiko.config.invoke = _LazyInvoke()
        paramiko.config.invoke_import_error = None
