"""Never push a secret: `cluster deploy` refuses a tree holding private key material (real
keys made by ssh-keygen, on the real testbed) unless it is excluded or --allow-secrets is
given; the testbed's own config never points deploy at its state dir (which holds the
controller's private key); and the scanner's verdicts are cached like the deploy hashes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from skeleton_app import secret_scan
from skeleton_app.secret_scan import looks_secret
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from skeleton_app.testing.testbed import files as tb_files
from skeleton_app.transfers import tree
from tests.support.deploy_support import host_path, make_source, unique_app_dir, variant
from tests.support.helpers import REPO, skeleton

# Built from parts, so that this file does not look like a key to the scanner itself.
BEGIN = "-----" + "BEGIN"


def _keygen(path: Path, kind: str = "ed25519", fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test", "-f", str(path)]
    if fmt:
        argv += ["-m", fmt]
    subprocess.run(argv, check=True)
    return path


def _tree_with_keys(root: Path) -> Path:
    src = make_source(root, "A")
    _keygen(src / "id_ed25519")  # the name alone says what it is (and its .pub is fine)
    _keygen(src / "certs" / "server.pem", "rsa", "PEM")  # "RSA PRIVATE KEY"
    return src


def test_planted_keys_are_refused_with_their_names_and_nothing_reaches_the_node(
        testbed: Testbed, tmp_path: Path) -> None:
    src = _tree_with_keys(tmp_path / "src")
    app_dir = unique_app_dir("secrets")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    for extra in ((), ("--dry-run",)):
        proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-01", *extra,
                        config=config)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr == (
            "skeleton: error: deploy: refusing to send private key material:"
            " id_ed25519, certs/server.pem (exclude it in deploy.exclude, or pass"
            " --allow-secrets)\n"), proc.stderr
        assert not host_path(testbed, "node-01", app_dir).exists()

    # Excluded: the rest of the tree goes, the keys stay here.
    excluded = variant(testbed, tmp_path, app_dir=app_dir, name="excluded.yaml",
                       deploy={"exclude": [".venv/", "__pycache__/", "*.pyc", ".git/",
                                           "logs/", "/id_ed25519", "*.pem"]})
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-01", config=excluded)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = host_path(testbed, "node-01", app_dir)
    assert (root / "VERSION").is_file() and (root / "id_ed25519.pub").is_file()
    assert not (root / "id_ed25519").exists() and not (root / "certs/server.pem").exists()

    # --allow-secrets: the user said so.
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-01",
                    "--allow-secrets", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (root / "id_ed25519").read_text() == (src / "id_ed25519").read_text()


def test_the_testbed_state_dir_is_refused_as_a_source(testbed: Testbed, tmp_path: Path) -> None:
    """What a non-editable install did before: `deploy.source: .` meant the state dir."""
    config = variant(testbed, tmp_path, app_dir=unique_app_dir("state"))
    proc = skeleton("cluster", "deploy", "--source", str(testbed.state_dir), "-n", "node-02",
                    config=config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refusing to send private key material:" in proc.stderr
    assert "id_ed25519," in proc.stderr or "id_ed25519 " in proc.stderr, proc.stderr
    assert "ssh_host_ed25519_key" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_testbed_config_always_names_a_safe_deploy_source(
        testbed: Testbed, make_testbed: Callable[..., Testbed],
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load(testbed.config_path.read_text())
    assert data["deploy"]["source"] == str(REPO)  # from a checkout: the checkout
    assert data["bootstrap"]["wheelhouse"] == str(REPO / ".wheelhouse")
    # As with a normal (non-editable) install: no checkout above the package.
    monkeypatch.setattr(tb_files, "_project_dir", lambda: None)
    bed = make_testbed(1)
    data = yaml.safe_load(bed.config_path.read_text())
    source = Path(data["deploy"]["source"])
    assert source == bed.state_dir / "app" and "bootstrap" not in data
    proc = skeleton("cluster", "deploy", "--config", str(bed.config_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    app = host_path(bed, "node-01", tb_mod.APP_DIR)
    assert sorted(p.name for p in app.iterdir()) == [".skeleton-deploy", "README.txt"]


def test_what_counts_as_a_secret(tmp_path: Path) -> None:
    for kind, fmt in (("ed25519", None), ("rsa", "PEM"), ("ecdsa", "PEM"), ("rsa", "PKCS8")):
        key = _keygen(tmp_path / f"k-{kind}-{fmt}")
        assert looks_secret("key.txt", key.read_bytes()[:4096]), (kind, fmt)
        assert not looks_secret("key.txt.pub", Path(f"{key}.pub").read_bytes())
    putty = "PuTTY-User-Key-" + "File-3: ssh-ed25519\nEncryption: none\n"
    assert looks_secret("x.ppk", putty.encode())
    assert looks_secret("enc.key", f"{BEGIN} ENCRYPTED PRIVATE KEY-----\nMII".encode())
    for name in ("id_rsa", "id_ed25519", "id_ecdsa_sk", "id_deploy-2"):
        assert looks_secret(name, b""), name
    for name in ("id_rsa.pub", "id_map.py", "ids", "valid_id"):
        assert not looks_secret(name, b"x = 1\n"), name
    assert not looks_secret("README.md", f"the header {BEGIN} CERTIFICATE-----".encode())
    # The project itself (source, tests, docs) is deployable: it names no key.
    caches = (".venv/", ".git/", ".wheelhouse/", "build/", ".mypy_cache/", ".pytest_cache/",
              ".ruff_cache/", "bench/.peers/")
    assert tree.tree_digest(REPO, caches, cache=False).secrets == ()


def test_verdicts_are_found_by_the_digest_walk_and_cached_with_the_hashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tree, "_RACY", 0.0)  # files written just now may be cached
    src = make_source(tmp_path / "src", "A")
    _keygen(src / "keys" / "deploy_key")
    first = tree.tree_digest(src)
    assert first.secrets == ("keys/deploy_key",)
    assert first.hex == tree.tree_digest(src, cache=False).hex

    def no_reading(name: str, path: str) -> bool:
        raise AssertionError(f"read {path}")

    with monkeypatch.context() as m:
        m.setattr(secret_scan, "is_secret_file", no_reading)
        assert tree.tree_digest(src) == first  # every verdict from the cache
    (src / "app/main.py").write_text(f"{BEGIN} PRIVATE KEY-----\n")
    (src / "keys/deploy_key").write_text("no longer a key\n")
    assert tree.tree_digest(src).secrets == ("app/main.py",)


# ------------------------------------------------------------------ the operator's DSN

# Built from parts, so that this file does not look like a DSN with a password itself.
OPERATOR_DSN = "postgresql://skeleton:" + "s3cret" + "@10.9.9.9:5432/skeleton"


def test_a_dsn_with_a_password_is_a_secret_one_without_is_not() -> None:
    pw = "pass" + "word"
    secret = {
        "config.yaml": f"registry:\n  stale_after: 30\n  dsn: {OPERATOR_DSN}\n",
        "flow.yml": f'registry: {{dsn: "{OPERATOR_DSN}"}}\n',
        "kv.yaml": f"registry:\n  dsn: 'host=db user=x {pw}=s3cret dbname=y'\n",
        ".env": f"SKELETON_DATABASE_URL={OPERATOR_DSN}\n",
        "run.sh": f"export DATABASE_URL='host=db {pw}=x'\n",
    }
    for name, text in secret.items():
        assert looks_secret(name, text.encode()), name
    fine = {
        "config.yaml": "registry:\n  dsn: postgresql://skeleton@db/skeleton\n  # peer auth\n",
        "null.yaml": "registry:\n  dsn: null\n",
        "kv.yaml": "registry:\n  dsn: host=db user=x dbname=y\n",
        "code.py": f"def connect(dsn: str, {pw}: str) -> None: ...\n",
        "urls.yaml": "mirror: https://user:tok@example.org/x\n",
    }
    for name, text in fine.items():
        assert not looks_secret(name, text.encode()), name
    # A config file's registry section may come late: read beyond the 8 KiB head.
    late = "# " + "x" * 100 + "\n"
    assert looks_secret("config.yaml", (late * 200 + secret["config.yaml"]).encode())


def test_deploy_refuses_a_config_holding_the_operators_dsn_and_caches_the_verdict(
        testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.yaml with `registry.dsn` holding a password: refused before anything is sent,
    naming the file and where the DSN belongs; excluded or --allow-secrets it goes; a DSN
    without a password goes; the verdict is cached like the keys' (no read on a rerun)."""
    src = make_source(tmp_path / "src", "A")
    (src / "config.yaml").write_text(f"app:\n  dir: /x\nregistry:\n  dsn: {OPERATOR_DSN}\n")
    app_dir = unique_app_dir("dsn")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    for extra in ((), ("--dry-run",)):
        proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-01", *extra,
                        config=config)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr == (
            "skeleton: error: deploy: refusing to send a database password: config.yaml"
            " (keep the DSN on the controller, in SKELETON_DATABASE_URL or a config file"
            " outside the tree (nodes use their own: `skeleton nodes credentials ID"
            " --install`); or exclude it in deploy.exclude, or pass --allow-secrets)\n"
        ), proc.stderr
        assert not host_path(testbed, "node-01", app_dir).exists()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tree, "_RACY", 0.0)  # files written just now may be cached
    tree.tree_digest(src)  # warm, then: the verdict comes without reading the file

    def no_reading(name: str, path: str) -> bool:
        raise AssertionError(f"read {path}")

    with monkeypatch.context() as m:
        m.setattr(secret_scan, "is_secret_file", no_reading)
        assert tree.tree_digest(src).secrets == ("config.yaml",)

    # Keys and a password together: one line naming both kinds.
    _keygen(src / "id_ed25519")
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-01", config=config)
    assert proc.returncode == 2
    assert ("refusing to send private key material: id_ed25519; and a database password:"
            " config.yaml (") in proc.stderr
    (src / "id_ed25519").unlink()

    excluded = variant(testbed, tmp_path, app_dir=app_dir, name="excluded.yaml",
                       deploy={"exclude": [".venv/", "__pycache__/", "*.pyc", ".git/",
                                           "logs/", "/config.yaml"]})
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-01", config=excluded)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = host_path(testbed, "node-01", app_dir)
    assert (root / "VERSION").is_file() and not (root / "config.yaml").exists()

    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-01",
                    "--allow-secrets", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert OPERATOR_DSN in (root / "config.yaml").read_text()

    # The DSN kept out of the file (peer auth, ~/.pgpass, SKELETON_DATABASE_URL): fine.
    (src / "config.yaml").write_text("registry:\n  dsn: postgresql://skeleton@db/skeleton\n")
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-01", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "s3cret" not in (root / "config.yaml").read_text()
