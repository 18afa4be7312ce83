"""The synthetic district (sample.py) as the seven OneRoster tables: one function per
entity turning the model into columns (CSV column -> values, in the model's order).
Demographics are drawn here, from the district's own random stream, as they are written.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from ingestd.oneroster import spec
from ingestd.oneroster.sample_data import (
    ABROAD,
    COURSE_GRADES,
    COURSES,
    K12,
    LEVEL_COURSES,
    OTHER_STATES,
    RACE_COLS,
    RACE_CUM,
    RACES,
    RESIDENCE,
    RESIDENCE_CUM,
    SCHOOL_YEAR,
    SESSIONS,
    SPANS,
    TERMS,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ingestd.oneroster.sample import District

Columns = dict[str, list[str]]


def _orgs(d: District) -> Columns:
    return {
        "sourcedId": [o.sid for o in d.orgs],
        "name": [o.name for o in d.orgs],
        "type": [o.type for o in d.orgs],
        "identifier": [o.identifier for o in d.orgs],
        "parentSourcedId": [o.parent for o in d.orgs],
    }


def _academic_sessions(d: District) -> Columns:
    return {
        "sourcedId": [d.sessions[s[0]] for s in SESSIONS],
        "title": [s[1] for s in SESSIONS],
        "type": [s[2] for s in SESSIONS],
        "startDate": [s[3] for s in SESSIONS],
        "endDate": [s[4] for s in SESSIONS],
        "parentSourcedId": [d.sessions[s[5]] if s[5] else "" for s in SESSIONS],
        "schoolYear": [SCHOOL_YEAR] * len(SESSIONS),
    }


def _courses(d: District) -> Columns:
    offered = [(o, COURSES[k]) for o in d.orgs[1:] for k in LEVEL_COURSES[o.level]]
    return {
        "sourcedId": [f"{o.sid}-{c.key}" for o, c in offered],
        "schoolYearSourcedId": [d.sessions["Y"]] * len(offered),
        "title": [c.title for _, c in offered],
        "courseCode": [c.key for _, c in offered],
        "grades": [",".join(COURSE_GRADES[c.key]) for _, c in offered],
        "orgSourcedId": [o.sid for o, _ in offered],
        "subjects": [c.subjects for _, c in offered],
        "subjectCodes": [c.sced for _, c in offered],
    }


def _classes(d: District) -> Columns:
    terms = {t: ",".join(d.sessions[k] for k in keys) for t, keys in TERMS.items()}
    ss = d.sections
    return {
        "sourcedId": [s.sid for s in ss],
        "title": [s.title for s in ss],
        "grades": [s.grades for s in ss],
        "courseSourcedId": [f"{s.org.sid}-{s.course.key}" for s in ss],
        "classCode": [s.code for s in ss],
        "classType": ["homeroom" if s.course.key.startswith("HR") else "scheduled" for s in ss],
        "location": [s.teacher.room for s in ss],
        "schoolSourcedId": [s.org.sid for s in ss],
        "termSourcedIds": [terms[s.course.term] for s in ss],
        # Elementary SIS exports rarely carry subjects on classes; secondary ones usually do.
        "subjects": [s.course.subjects if s.org.level else "" for s in ss],
        "subjectCodes": [s.course.sced for s in ss],
        "periods": [s.periods for s in ss],
    }


def _users(d: District) -> Columns:
    people = [*d.admins, *d.teachers, *d.students, *d.guardians]
    return {
        "sourcedId": [p.sid for p in people],
        "enabledUser": ["true" if p.enabled else "false" for p in people],
        "orgSourcedIds": [",".join(p.schools) for p in people],
        "role": [p.role for p in people],
        "username": [p.username for p in people],
        "userIds": [p.user_ids for p in people],
        "givenName": [p.given for p in people],
        "familyName": [p.family for p in people],
        "middleName": [p.middle for p in people],
        "identifier": [p.identifier for p in people],
        "email": [p.email for p in people],
        "sms": [p.sms for p in people],
        "phone": [p.phone for p in people],
        "agentSourcedIds": [",".join(p.agents) for p in people],
        "grades": [K12[p.grade] if p.grade >= 0 else "" for p in people],
    }


def _demographics(d: District) -> Columns:
    rng, home = d.rng_demo, d.state
    skip = ("status", "dateLastModified")
    cols: Columns = {c: [] for c in spec.DEMOGRAPHICS.column_names if c not in skip}
    kindergarten_born = int(SCHOOL_YEAR) - 7  # 5 years old on Sept 1 of the fall term
    for kid in d.students:
        # Born in the 12 months up to Sept 1 of their cohort's year; a few were held back once.
        first = date(kindergarten_born - kid.grade - (rng.random() < 0.03), 9, 2)
        cols["sourcedId"].append(kid.sid)
        cols["birthDate"].append((first + timedelta(days=rng.below(365))).isoformat())
        cols["sex"].append(kid.sex)
        races = rng.weighted(RACES, RACE_CUM)
        for col in RACE_COLS:
            cols[col].append("true" if col in races else "false")
        cols["demographicRaceTwoOrMoreRaces"].append("true" if len(races) > 1 else "false")
        cols["hispanicOrLatinoEthnicity"].append("true" if rng.random() < 0.28 else "false")
        r = rng.random()
        if r < 0.93:
            state = home.abbr if r < 0.80 else rng.pick(OTHER_STATES)
            city = rng.pick(home.cities) if state == home.abbr and rng.random() < 0.5 else ""
            country = "US"
        else:
            country, city = rng.pick(ABROAD)
            state, city = "", city if rng.random() < 0.5 else ""
        cols["countryOfBirthCode"].append(country)
        cols["stateOfBirthAbbreviation"].append(state)
        cols["cityOfBirth"].append(city)
        residence = rng.weighted(RESIDENCE, RESIDENCE_CUM)
        cols["publicSchoolResidenceStatus"].append(residence)
    return cols


def _enrollments(d: District) -> Columns:
    cols: Columns = {c: [] for c in ("classSourcedId", "schoolSourcedId", "userSourcedId", "role",
                                     "primary", "beginDate", "endDate")}  # fmt: skip
    for s in d.sections:
        terms = TERMS[s.course.term]
        begin, end = SPANS[terms[0]][0], SPANS[terms[-1]][1]
        n = len(s.members) + 1  # the teacher first, then the students
        cols["classSourcedId"] += [s.sid] * n
        cols["schoolSourcedId"] += [s.org.sid] * n
        cols["userSourcedId"] += [s.teacher.sid, *(m.sid for m in s.members)]
        cols["role"] += ["teacher", *["student"] * (n - 1)]
        cols["primary"] += ["true", *[""] * (n - 1)]
        cols["beginDate"] += [begin] * n
        cols["endDate"] += [end] * n
    total = len(cols["role"])
    return {"sourcedId": [str(i) for i in range(10_000_001, 10_000_001 + total)], **cols}


BUILDERS: dict[str, Callable[[District], Columns]] = {
    "orgs": _orgs,
    "academicSessions": _academic_sessions,
    "courses": _courses,
    "classes": _classes,
    "users": _users,
    "demographics": _demographics,
    "enrollments": _enrollments,
}
