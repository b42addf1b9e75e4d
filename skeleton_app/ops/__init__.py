"""Operations: one capability per module, plain functions over a `Cluster` returning results.

Each is the body that the application layer (`skeleton_app.app.commands`) runs for the CLI
(`skeleton_app.app.cli`), the Invoke tasks (`tasks.py`) and the Fabric tasks (`fabfile.py`);
none of those front ends holds logic of its own.
"""
