"""`python -m skeleton_app ...` is the `skeleton` command (with warm mode's fast path)."""

from skeleton_app.app.fast import main

main()
