"""A tenant's own settings reach the pipeline's policy; others get the global ones."""

from __future__ import annotations

from ingestd.config import Config, IngestConfig, TenantConfig, TenantSafeguards
from ingestd.pipeline.ingest import tenant_policy


def test_tenant_overrides_reach_validation_and_safeguards():
    config = Config(
        ingest=IngestConfig(required_files=["orgs", "users", "enrollments"]),
        tenants={
            "small": TenantConfig(
                id="small",
                required_files=["orgs", "users"],
                safeguards=TenantSafeguards(max_delete_percent=25),
                enrollment_key="natural",
            ),
            "plain": TenantConfig(id="plain"),
        },
    )
    small, plain = tenant_policy(config, "small"), tenant_policy(config, "plain")
    assert small.validation.required_entities == ("orgs", "users")
    assert small.safeguards.required_entities == ("orgs", "users")
    assert small.safeguards.max_delete_percent == 25 and small.diff.natural_key
    assert plain.validation.required_entities == ("orgs", "users", "enrollments")
    assert plain.safeguards.max_delete_percent == 10 and not plain.diff.natural_key
