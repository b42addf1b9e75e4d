"""The package's public API: every name in `skeleton_app.__all__` resolves, and importing the
package alone loads none of the library (the node daemon and the CLI's fast paths rely on it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import skeleton_app
from skeleton_app.cluster import Cluster
from skeleton_app.remote import SSHExecutor


def test_every_public_name_resolves_to_the_real_object() -> None:
    assert set(skeleton_app.__all__) == {*skeleton_app._PUBLIC, "__version__"}
    for name in skeleton_app.__all__:
        assert getattr(skeleton_app, name) is not None, name
    assert skeleton_app.Cluster is Cluster
    assert skeleton_app.SSHExecutor is SSHExecutor


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="nosuch"):
        skeleton_app.nosuch  # noqa: B018


def test_importing_the_package_loads_nothing_else() -> None:
    code = ("import sys, skeleton_app\n"
            "print(sorted(m for m in sys.modules if m.startswith('skeleton_app.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
