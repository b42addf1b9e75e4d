"""`python -m skeleton_app.agent`: the node daemon (how daemon.command starts it)."""

import sys

from skeleton_app.agent import main

# Guarded: a tool that imports every module (pkgutil.walk_packages, as the click-blocked
# import test does) must not start a daemon.
if __name__ == "__main__":
    sys.exit(main())
