"""`python -m skeleton_app.agent`: the node daemon (how daemon.command starts it)."""

import sys

from skeleton_app.agent import main

sys.exit(main())
