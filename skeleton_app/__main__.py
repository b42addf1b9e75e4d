"""`python -m skeleton_app ...` is the `skeleton` command."""

from skeleton_app.app.cli import main

main()
