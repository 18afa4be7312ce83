"""Tenant files (`tenants.d/<id>.toml`): add, change password, list, remove.

One file per school, so configuration management and `ingestd tenant add`
both work, and a reload (SIGHUP) picks up new schools. Passwords are stored
only as argon2id hashes; removing a tenant removes its file and keeps its data.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from ingestd.config import TenantConfig, validate_tenant_id
from ingestd.errors import UsageError


def tenant_file(tenants_dir: Path, tenant_id: str) -> Path:
    """The file of one tenant."""
    return tenants_dir / f"{validate_tenant_id(tenant_id)}.toml"


def read_tenant(tenants_dir: Path, tenant_id: str) -> dict[str, Any]:
    """A tenant file's contents (UsageError when there is none)."""
    path = tenant_file(tenants_dir, tenant_id)
    if not path.exists():
        raise UsageError(f"no tenant {tenant_id!r} (no {path})")
    with path.open("rb") as f:
        return tomllib.load(f)


def write_tenant(tenants_dir: Path, tenant_id: str, data: dict[str, Any], *, new: bool) -> Path:
    """Validate and write a tenant file atomically (0640: it holds a password hash)."""
    TenantConfig.model_validate({"id": tenant_id, **data})
    path = tenant_file(tenants_dir, tenant_id)
    if new and path.exists():
        raise UsageError(f"tenant {tenant_id!r} exists already ({path})")
    tenants_dir.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_toml(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    return path


def remove_tenant(tenants_dir: Path, tenant_id: str) -> Path:
    """Remove the tenant's file (its inbox, sets, snapshots and events are kept)."""
    path = tenant_file(tenants_dir, tenant_id)
    if not path.exists():
        raise UsageError(f"no tenant {tenant_id!r} (no {path})")
    path.unlink()
    return path


def _toml(data: dict[str, Any]) -> str:
    """A flat TOML document (strings, booleans, numbers, lists of strings, one table level)."""
    lines = ["# Written by `ingestd tenant`; edits are fine (check with `ingestd check-config`)."]
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if key not in tables and value is not None:
            lines.append(f"{key} = {_value(value)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string
