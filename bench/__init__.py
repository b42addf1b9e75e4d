"""Benchmarks of skeleton_app against the tools people use instead (issue 8).

    sudo bench/run            # or: sudo .venv/bin/python -m bench [--quick]

Modules: `measure` (timing a process or a call), `peers` (installing and invoking the other
tools), `latency` (case 2's in-process clients), `cases` (the five cases), `report` (tables,
goals, machine description), `fabric_fanout` (the plain Fabric script peer).
"""
