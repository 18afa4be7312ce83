"""OneRoster 1.1 REST pages decoded and mapped by polars, in Rust: the fast path of the
OneRoster REST poller (oneroster_rest.py), with the same rows as the Python mapping
(oneroster_rest_map.py) for every page it takes, and None for every page it cannot take.

A page body is parsed by `pl.read_json` against a strict schema built from
`oneroster_rest_map.MAPPING`: each wrapper key the collection accepts as a list of records,
each record a struct of the mapped fields only (other fields, `metadata` included, are
skipped), plus `error` and `statusInfoSet` as text so that an error body is noticed. The
records are then mapped with expressions to a frame of String columns named and ordered as
the CSV binding's columns, "" where a value is null or missing:

    Kind       schema                          expression
    TEXT       String                          the text (polars writes integers and
                                               booleans as json.loads + `_text` do)
    BOOL       Enum("true", "false")           its text ("TRUE", "1"... fail the schema)
    REF        Struct(sourcedId)               .sourcedId
    REFS       List(Struct(sourcedId))         the sourcedIds comma-joined (null ones "")
    LIST       List(String)                    comma-joined (a string: itself)
    USER_IDS   List(Struct(type, identifier))  `{type:identifier}` comma-joined

The page goes the Python way (json.loads, then `make_mapper`: the same rows for odd but
valid shapes, the precise PullError for shapes the binding does not allow) when:

- polars refuses it: not JSON, a value of another shape than the schema's (a bare sourcedId
  where a GUIDRef belongs, "TRUE" for a boolean, userIds given as text...);
- the body is not one object, or it has `error` or `statusInfoSet`, or no wrapper key holds
  a list, or a wrapper key that comes before the one found is named anywhere in the body
  (json.loads would take that key's value, null or not, and polars cannot tell null from
  missing);
- a record, or a userId, is null (a PullError the Python way; polars would make a row);
- the body may hold a `\\uD800`-`\\uDFFF` escape (`_SURROGATE`: a lone surrogate, polars
  decodes it to "\\x00", json.loads keeps it), or a number token with a fraction or an
  exponent after a key or in a list (`_FLOAT`: polars writes `1.0` as "1", Python "1.0";
  integers and booleans come out alike). Rust regexes over the body, ~0.5 ms/MB each; the
  float one (~2 ms/MB) only where `_NUMBER_END` says some number token may end. Strings
  that only look like such tokens send the page the Python way too: time, not a
  difference.

One difference is left: an object naming the same key twice gives the first value here
and the last through json.loads (RFC 8259 leaves it to the implementation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from ingestd.sources.pollers.base import PullError, Row
from ingestd.sources.pollers.oneroster_rest_map import MAPPING, Kind

_REF = pl.Struct({"sourcedId": pl.String})
_USER_ID = pl.Struct({"type": pl.String, "identifier": pl.String})
_BOOL = pl.Enum(["true", "false"])
_DTYPES: dict[Kind, pl.DataType] = {
    Kind.TEXT: pl.String(),
    Kind.BOOL: _BOOL,
    Kind.REF: _REF,
    Kind.REFS: pl.List(_REF),
    Kind.LIST: pl.List(pl.String),
    Kind.USER_IDS: pl.List(_USER_ID),
}
_SURROGATE = r"\\u[dD][89abAB]"  # an escaped UTF-16 surrogate
_NUMBER_END = r"[0-9][ \t\r\n]*[,}\]]"  # where any number token ends (and "1, 2"...)
_FLOAT = r'(?:"[ \t\r\n]*:|[\[,])[ \t\r\n]*-?[0-9]+[.eE]'  # a float after `"key":`, `[`, `,`


@dataclass(frozen=True, slots=True)
class FramePage:
    """A page taken by the fast path: its records mapped to CSV columns."""

    key: str  # the wrapper key the records came under
    frame: pl.DataFrame


def columns(entity: str) -> list[str]:
    """The CSV columns of `entity`, in the CSV binding's order."""
    return [col for col, _, _ in MAPPING[entity]]


def rows_frame(entity: str, rows: Sequence[Row]) -> pl.DataFrame:
    """Rows of the Python mapping as a frame like the fast path's ("" where absent)."""
    names = columns(entity)
    try:
        return pl.DataFrame(
            {name: [row.get(name, "") for row in rows] for name in names},
            schema=dict.fromkeys(names, pl.String),
        )
    except UnicodeEncodeError:  # json.loads keeps an escaped lone surrogate ("\ud800")
        raise PullError(
            f"{entity}: a value of the API's answer is not text (a lone UTF-16 surrogate)",
            "bad_record",
        ) from None


def empty_frame(entity: str) -> pl.DataFrame:
    """No records of `entity`."""
    return rows_frame(entity, [])


class PageDecoder:
    """Decodes the pages of one collection (its entity, its wrapper keys in order)."""

    def __init__(self, entity: str, keys: Sequence[str]) -> None:
        self.entity = entity
        self.keys = tuple(keys)
        record = pl.Struct({field: _DTYPES[kind] for _, field, kind in MAPPING[entity]})
        self.schema = {
            **dict.fromkeys(self.keys, pl.List(record)),
            "error": pl.String,
            "statusInfoSet": pl.String,
        }
        self.mapping = [_expression(field, kind).alias(col) for col, field, kind in
                        MAPPING[entity]]  # fmt: skip
        self.user_ids = [field for _, field, kind in MAPPING[entity] if kind is Kind.USER_IDS]

    def decode(self, content: bytes) -> FramePage | None:
        """The page mapped to CSV columns, or None: it goes the Python way."""
        if content[:64].lstrip()[:1] != b"{" or _suspect(content):
            return None
        try:
            body = pl.read_json(content, schema=self.schema)
        except pl.exceptions.PolarsError:
            return None
        if body.height != 1 or body.item(0, "error") is not None:
            return None
        if body.item(0, "statusInfoSet") is not None:
            return None
        key = self._key(body, content)
        if key is None:
            return None
        if not body.select(pl.col(key).list.len()).item():
            return FramePage(key, empty_frame(self.entity))
        records = body.select(pl.col(key).explode())
        if self._has_null(records, key):
            return None
        return FramePage(key, records.unnest(key).select(self.mapping))

    def _key(self, body: pl.DataFrame, content: bytes) -> str | None:
        """The first wrapper key holding a list, if no key before it is in the body."""
        for at, key in enumerate(self.keys):
            if body.item(0, key) is not None:
                before = self.keys[:at]
                if any(f'"{k}"'.encode() in content for k in before):
                    return None
                return key
        return None

    def _has_null(self, records: pl.DataFrame, key: str) -> bool:
        """A null record, or a null userId: PullErrors the Python way."""
        record = pl.col(key)
        checks = [record.is_null()]
        for field in self.user_ids:
            checks.append(record.struct.field(field).list.eval(pl.element().is_null()).list.any())
        return bool(records.select(pl.any_horizontal(checks).any()).item())


def _expression(field: str, kind: Kind) -> pl.Expr:
    value = pl.col(field)
    if kind is Kind.BOOL:
        value = value.cast(pl.String)
    elif kind is Kind.REF:
        value = value.struct.field("sourcedId")
    elif kind is Kind.REFS:
        value = _joined(value, pl.element().struct.field("sourcedId"))
    elif kind is Kind.LIST:
        value = _joined(value, pl.element())
    elif kind is Kind.USER_IDS:
        part = [pl.element().struct.field(f).fill_null("") for f in ("type", "identifier")]
        value = _joined(value, pl.concat_str(pl.lit("{"), part[0], pl.lit(":"), part[1],
                                             pl.lit("}")))  # fmt: skip
    return value.fill_null("")


def _joined(value: pl.Expr, item: pl.Expr) -> pl.Expr:
    """Each list's items (null ones as "") comma-joined."""
    return value.list.eval(item.fill_null("")).list.join(",", ignore_nulls=False)


def _suspect(content: bytes) -> bool:
    """An escaped surrogate or a float token may be in the body, or it is not UTF-8. The
    float scan, the slower one, runs only where some number token may end."""
    try:
        text = pl.Series([content]).cast(pl.String)
    except pl.exceptions.PolarsError:  # not UTF-8
        return True
    contains = text.str.contains
    if contains(_SURROGATE).item():
        return True
    return bool(contains(_NUMBER_END).item() and contains(_FLOAT).item())


def concat(entity: str, frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """The pages of one collection as one frame."""
    frames = list(frames)
    return pl.concat(frames, rechunk=True) if frames else empty_frame(entity)


def last_copies(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per sourcedId: the last copy, in the first copy's place (rows without a
    sourcedId are all kept, each in its place)."""
    at, place = "__at", "__place"
    keyed = pl.col("sourcedId") != ""
    indexed = frame.with_row_index(at).with_columns(
        pl.when(keyed).then(pl.col(at).min().over("sourcedId")).otherwise(pl.col(at)).alias(place)
    )
    last = ~keyed | (pl.col(at) == pl.col(at).max().over("sourcedId"))
    return indexed.filter(last).sort(place).drop(at, place)
