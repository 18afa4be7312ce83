"""Safeguards: a set that would delete or change too much is held until an operator decides.

Per entity, against the rows the tenant had: deletes above `max_delete_percent`,
updates above `max_update_percent`, or a required entity dropping to zero rows.
A tenant's first set is never held (there is nothing to protect yet).
"""

from __future__ import annotations

from dataclasses import dataclass

from ingestd.oneroster import spec


@dataclass(frozen=True, slots=True)
class SafeguardPolicy:
    """Thresholds, global or a tenant's own."""

    max_delete_percent: float = 10.0
    max_update_percent: float = 75.0
    hold_on_empty: bool = True
    required_entities: tuple[str, ...] = spec.ENTITY_NAMES


@dataclass(frozen=True, slots=True)
class HoldReason:
    """Why a set is held: which entity, which rule, the share found and the limit."""

    entity: str
    rule: str  # too_many_deletes | too_many_updates | emptied
    count: int
    prior_rows: int
    percent: float
    limit: float

    def describe(self) -> str:
        """One line for people."""
        if self.rule == "emptied":
            return f"{self.entity}: all {self.prior_rows} rows would be deleted"
        what = "deleted" if self.rule == "too_many_deletes" else "updated"
        return (
            f"{self.entity}: {self.count} of {self.prior_rows} rows would be {what} "
            f"({self.percent:.1f}% > {self.limit:g}%)"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, with the description."""
        return {
            "entity": self.entity,
            "rule": self.rule,
            "count": self.count,
            "prior_rows": self.prior_rows,
            "percent": round(self.percent, 2),
            "limit": self.limit,
            "message": self.describe(),
        }


def check(
    counts: dict[str, dict[str, int]], policy: SafeguardPolicy, *, first_set: bool
) -> list[HoldReason]:
    """Reasons to hold a set with these per-entity counts (rows, prior_rows, updated, deleted)."""
    if first_set:
        return []
    reasons: list[HoldReason] = []
    for entity, c in counts.items():
        prior = c["prior_rows"]
        if prior == 0:
            continue
        if policy.hold_on_empty and c["rows"] == 0 and entity in policy.required_entities:
            reasons.append(HoldReason(entity, "emptied", c["deleted"], prior, 100.0, 0.0))
            continue
        deleted = 100.0 * c["deleted"] / prior
        if deleted > policy.max_delete_percent:
            reasons.append(
                HoldReason(
                    entity,
                    "too_many_deletes",
                    c["deleted"],
                    prior,
                    deleted,
                    policy.max_delete_percent,
                )
            )
        updated = 100.0 * c["updated"] / prior
        if updated > policy.max_update_percent:
            reasons.append(
                HoldReason(
                    entity,
                    "too_many_updates",
                    c["updated"],
                    prior,
                    updated,
                    policy.max_update_percent,
                )
            )
    return reasons
