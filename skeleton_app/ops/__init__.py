"""Operations: one capability per module, plain functions over a `Cluster` returning results.

Each is the body that the CLI (`cli.py`), the Invoke tasks (`tasks.py`) and the Fabric
tasks (`fabfile.py`) call; none of those front ends holds logic of its own.
"""
