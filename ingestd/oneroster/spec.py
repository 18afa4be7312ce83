"""OneRoster 1.1 CSV rostering tables as data: files, columns in order, formats, enums, references.

Everything the reader and the validator know about OneRoster comes from here
(source: ../shared/ONEROSTER.md, restating the 1EdTech 1.1 CSV binding).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """The format a column's values must have."""

    TEXT = "text"
    ENUM = "enum"
    BOOL = "bool"
    DATE = "date"  # YYYY-MM-DD
    DATETIME = "datetime"  # ISO 8601 UTC
    YEAR = "year"  # YYYY
    GRADES = "grades"  # list of CEDS grade codes
    ID_LIST = "id_list"  # list of sourcedIds
    TEXT_LIST = "text_list"  # list of free text (subjects, periods)
    USER_IDS = "user_ids"  # {type:id},{type:id}


LIST_KINDS = frozenset({Kind.GRADES, Kind.ID_LIST, Kind.TEXT_LIST, Kind.USER_IDS})

STATUS_VALUES = ("active", "tobedeleted")
STATUS_LEGACY = ("inactive",)  # OneRoster 1.0 leftover: accepted with a warning
BOOL_VALUES = ("true", "false")
GRADE_CODES = (
    "IT",
    "PR",
    "PK",
    "TK",
    "KG",
    "01",
    "02",
    "03",
    "04",
    "05",
    "06",
    "07",
    "08",
    "09",
    "10",
    "11",
    "12",
    "13",
    "PS",
    "UG",
    "Other",
)
EXTENSION_PREFIX = "ext:"  # vendors extend enumerations with it: accepted
METADATA_PREFIX = "metadata."  # extension columns after the spec columns


@dataclass(frozen=True, slots=True)
class Column:
    """One spec column: its name, whether a value is required, and its format."""

    name: str
    required: bool = False
    kind: Kind = Kind.TEXT
    values: tuple[str, ...] = ()  # allowed values of an ENUM

    @property
    def is_list(self) -> bool:
        """True for comma-separated list fields (quoted in the CSV)."""
        return self.kind in LIST_KINDS


@dataclass(frozen=True, slots=True)
class Reference:
    """A column whose values (one, or each item of a list) must be sourcedIds of `target`."""

    entity: str
    column: str
    target: str
    target_type: str | None = None  # required `type` of the target row (orgs: school, ...)
    no_cycles: bool = False  # parent chains within one table


@dataclass(frozen=True, slots=True)
class Entity:
    """One rostering file: its entity name, file name and columns in spec order."""

    name: str
    columns: tuple[Column, ...]

    @property
    def file_name(self) -> str:
        """The exact file name the spec requires."""
        return f"{self.name}.csv"

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in spec order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """The spec column called `name`."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def _common(*rest: Column) -> tuple[Column, ...]:
    return (
        Column("sourcedId", required=True),
        Column("status", kind=Kind.ENUM, values=STATUS_VALUES),
        Column("dateLastModified", kind=Kind.DATETIME),
        *rest,
    )


_B = Kind.BOOL
ORGS = Entity(
    "orgs",
    _common(
        Column("name", required=True),
        Column(
            "type",
            required=True,
            kind=Kind.ENUM,
            values=("department", "school", "district", "local", "state", "national"),
        ),
        Column("identifier"),
        Column("parentSourcedId"),
    ),
)
ACADEMIC_SESSIONS = Entity(
    "academicSessions",
    _common(
        Column("title", required=True),
        Column(
            "type",
            required=True,
            kind=Kind.ENUM,
            values=("gradingPeriod", "semester", "schoolYear", "term"),
        ),
        Column("startDate", required=True, kind=Kind.DATE),
        Column("endDate", required=True, kind=Kind.DATE),
        Column("parentSourcedId"),
        Column("schoolYear", required=True, kind=Kind.YEAR),
    ),
)
COURSES = Entity(
    "courses",
    _common(
        Column("schoolYearSourcedId"),
        Column("title", required=True),
        Column("courseCode"),
        Column("grades", kind=Kind.GRADES),
        Column("orgSourcedId", required=True),
        Column("subjects", kind=Kind.TEXT_LIST),
        Column("subjectCodes", kind=Kind.TEXT_LIST),
    ),
)
CLASSES = Entity(
    "classes",
    _common(
        Column("title", required=True),
        Column("grades", kind=Kind.GRADES),
        Column("courseSourcedId", required=True),
        Column("classCode"),
        Column("classType", required=True, kind=Kind.ENUM, values=("homeroom", "scheduled")),
        Column("location"),
        Column("schoolSourcedId", required=True),
        Column("termSourcedIds", required=True, kind=Kind.ID_LIST),
        Column("subjects", kind=Kind.TEXT_LIST),
        Column("subjectCodes", kind=Kind.TEXT_LIST),
        Column("periods", kind=Kind.TEXT_LIST),
    ),
)
DEMOGRAPHICS = Entity(
    "demographics",
    _common(
        Column("birthDate", kind=Kind.DATE),
        Column("sex", kind=Kind.ENUM, values=("male", "female")),
        Column("americanIndianOrAlaskaNative", kind=_B),
        Column("asian", kind=_B),
        Column("blackOrAfricanAmerican", kind=_B),
        Column("nativeHawaiianOrOtherPacificIslander", kind=_B),
        Column("white", kind=_B),
        Column("demographicRaceTwoOrMoreRaces", kind=_B),
        Column("hispanicOrLatinoEthnicity", kind=_B),
        Column("countryOfBirthCode"),
        Column("stateOfBirthAbbreviation"),
        Column("cityOfBirth"),
        Column("publicSchoolResidenceStatus"),
    ),
)
ENROLLMENTS = Entity(
    "enrollments",
    _common(
        Column("classSourcedId", required=True),
        Column("schoolSourcedId", required=True),
        Column("userSourcedId", required=True),
        Column(
            "role",
            required=True,
            kind=Kind.ENUM,
            values=("administrator", "proctor", "student", "teacher"),
        ),
        Column("primary", kind=_B),
        Column("beginDate", kind=Kind.DATE),
        Column("endDate", kind=Kind.DATE),
    ),
)
USERS = Entity(
    "users",
    _common(
        Column("enabledUser", required=True, kind=_B),
        Column("orgSourcedIds", required=True, kind=Kind.ID_LIST),
        Column(
            "role",
            required=True,
            kind=Kind.ENUM,
            values=(
                "administrator",
                "aide",
                "guardian",
                "parent",
                "proctor",
                "relative",
                "student",
                "teacher",
            ),
        ),
        Column("username", required=True),
        Column("userIds", kind=Kind.USER_IDS),
        Column("givenName", required=True),
        Column("familyName", required=True),
        Column("middleName"),
        Column("identifier"),
        Column("email"),
        Column("sms"),
        Column("phone"),
        Column("agentSourcedIds", kind=Kind.ID_LIST),
        Column("grades", kind=Kind.GRADES),
        Column("password"),
    ),
)

# Parents first: the order in which creates/updates are applied (deletes go in reverse).
ENTITIES: tuple[Entity, ...] = (
    ORGS,
    ACADEMIC_SESSIONS,
    COURSES,
    CLASSES,
    USERS,
    DEMOGRAPHICS,
    ENROLLMENTS,
)
ENTITY_BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}
ENTITY_NAMES: tuple[str, ...] = tuple(e.name for e in ENTITIES)

MANIFEST_FILE = "manifest.csv"
MANIFEST_HEADER = ("propertyName", "value")
MANIFEST_MODES = ("absent", "bulk", "delta")
MANIFEST_KNOWN_KEYS = (
    "manifest.version",
    "oneroster.version",
    "source.systemName",
    "source.systemCode",
)
# Files that may be in a OneRoster set but are outside rostering: kept, never diffed.
GRADEBOOK_NAMES = (
    "categories",
    "classResources",
    "courseResources",
    "lineItems",
    "resources",
    "results",
)

# Every reference in the spec; the validator checks each (list fields item by item).
REFERENCES: tuple[Reference, ...] = (
    Reference("orgs", "parentSourcedId", "orgs", no_cycles=True),
    Reference("academicSessions", "parentSourcedId", "academicSessions", no_cycles=True),
    Reference("courses", "schoolYearSourcedId", "academicSessions", target_type="schoolYear"),
    Reference("courses", "orgSourcedId", "orgs"),
    Reference("classes", "courseSourcedId", "courses"),
    Reference("classes", "schoolSourcedId", "orgs", target_type="school"),
    Reference("classes", "termSourcedIds", "academicSessions"),
    Reference("users", "orgSourcedIds", "orgs"),
    Reference("users", "agentSourcedIds", "users"),
    Reference("demographics", "sourcedId", "users"),
    Reference("enrollments", "classSourcedId", "classes"),
    Reference("enrollments", "schoolSourcedId", "orgs", target_type="school"),
    Reference("enrollments", "userSourcedId", "users"),
)
