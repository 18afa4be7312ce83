"""Finding yesterday's rows among today's lines (carry.PriorEntity.locate) must give what a
plain join on both prints gives, whatever the edits: lines changed, removed, added,
moved, shuffled, repeated."""

from __future__ import annotations

import random

import polars as pl
import pytest

from ingestd.oneroster.carry import NotCarried, PriorEntity
from ingestd.oneroster.lineprints import L1, L2, prints_of


def joined(prints: pl.DataFrame, prior: pl.DataFrame) -> list[int | None]:
    """The plain answer: per line, the prior row with both prints equal."""
    rows = prior.with_row_index("row").drop_nulls(L1)
    found = prints.join(rows, on=[L1, L2], how="left", maintain_order="left")
    return found["row"].to_list()


def day_after(rng: random.Random, lines: list[str]) -> list[str]:
    out = list(lines)
    for _ in range(rng.randint(0, 30)):
        edit = rng.choice(["change", "remove", "add", "move", "shuffle"])
        if not out:
            break
        i = rng.randrange(len(out))
        if edit == "change":
            out[i] += "x"
        elif edit == "remove":
            out.pop(i)
        elif edit == "add":
            out.insert(i, f"new,{rng.random()}")
        elif edit == "move":
            out.insert(rng.randrange(len(out)), out.pop(i))
        else:
            block = out[i : i + rng.randint(2, 200)]
            rng.shuffle(block)
            out[i : i + len(block)] = block
    return out


@pytest.mark.parametrize("seed", range(40))
def test_locate_finds_what_a_join_finds(seed: int) -> None:
    rng = random.Random(seed)
    seeds = (seed, seed + 1)
    before = [f"{i},name {i},{rng.random()}" for i in range(rng.choice([0, 1, 5, 300, 3000]))]
    prior_prints = prints_of(pl.Series(before, dtype=pl.String), seeds)
    if before and rng.random() < 0.3:  # rows that had something to report have no prints
        quiet = pl.Series([rng.random() > 0.1 for _ in before])
        prior_prints = prior_prints.select(pl.when(quiet).then(pl.all()))
    prior = PriorEntity.of(pl.DataFrame({"i": range(len(before))}), prior_prints, seeds)
    today = prints_of(pl.Series(day_after(rng, before), dtype=pl.String), seeds)
    assert prior.locate(today).to_list() == joined(today, prior_prints)


def test_a_line_twice_in_the_state_cannot_be_located() -> None:
    prints = prints_of(pl.Series(["a,1", "b,2", "a,1"]), (1, 2))
    with pytest.raises(NotCarried):
        PriorEntity.of(pl.DataFrame({"i": [0, 1, 2]}), prints, (1, 2))


def test_a_line_whose_first_print_collides_is_not_taken_for_the_row() -> None:
    def frame(l1: list[int], l2: list[int]) -> pl.DataFrame:
        return pl.DataFrame({L1: l1, L2: l2}, schema={L1: pl.UInt64, L2: pl.UInt64})

    prior = PriorEntity.of(pl.DataFrame({"i": [0, 1, 2]}), frame([10, 20, 30], [1, 2, 3]), (1, 2))
    today = frame([10, 20, 30, 20], [1, 9, 3, 2])  # line 2: same L1 as row 1, another L2
    assert prior.locate(today).to_list() == [0, None, 2, 1]
