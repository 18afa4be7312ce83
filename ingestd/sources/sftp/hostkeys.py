"""Host keys: ed25519 and RSA 3072, made on first start in `<state_dir>/host_keys/` (0600).

Schools pin these; they must never change by accident, so an existing key is
always reused and a missing one is made once, written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

HOST_KEY_DIR = "host_keys"
KEYS = (
    ("ssh_host_ed25519_key", "ssh-ed25519", {}),
    ("ssh_host_rsa_key", "ssh-rsa", {"key_size": 3072}),
)


def load_host_keys(state_dir: Path, *, create: bool = True) -> list[asyncssh.SSHKey]:
    """The server's host keys, made on first use when `create`."""
    folder = state_dir / HOST_KEY_DIR
    keys = []
    for name, alg, options in KEYS:
        path = folder / name
        if not path.exists():
            if not create:
                continue
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = asyncssh.generate_private_key(alg, comment="ingestd", **options)
            temp = path.with_name(f".{name}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
            (folder / f"{name}.pub").write_bytes(key.export_public_key())
        os.chmod(path, 0o600)
        keys.append(asyncssh.read_private_key(path))
    return keys


def fingerprints(keys: list[asyncssh.SSHKey]) -> list[tuple[str, str]]:
    """(algorithm, SHA256 fingerprint) of each key, as `ssh-keygen -l` prints them."""
    return [(k.get_algorithm(), k.get_fingerprint("sha256")) for k in keys]
