"""Deterministic synthetic OneRoster 1.1 bulk set: a realistic US K-12 district for tests and demos.

Same (students, seed) gives byte-identical files and zip in any process: every random
choice comes from `random.Random` streams seeded from the seed (never the global RNG,
the clock or hash()), and every loop walks ordered data. Column order comes from spec.
"""

from __future__ import annotations

import bisect
import functools
import gc
import random
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from ingestd.oneroster import spec
from ingestd.oneroster.sample_data import (
    ASCII_FOLD,
    CLASS_CAP,
    COURSES,
    DISTRICT_KINDS,
    DISTRICT_PLACES,
    ELEMENTARY_PERIODS,
    FAMILY_NAMES,
    GIVEN_NAMES,
    K12,
    LEVEL_COURSES,
    LEVELS,
    NAMED_ROOMS,
    ROMANIZED,
    SCHOOL_NAMES,
    SESSIONS,
    SLOTS,
    STATES,
    Course,
    grade_label,
    school_level,
)
from ingestd.oneroster.sample_tables import BUILDERS
from ingestd.oneroster.sample_writer import SampleSink, sample_csv, sample_manifest

__all__ = ["SampleSummary", "generate"]

T = TypeVar("T")


@dataclass(frozen=True)
class SampleSummary:
    """What `generate` wrote."""

    path: Path  # the directory or the zip written
    rows: dict[str, int]  # entity name -> data rows written
    bytes_written: int  # sum of the file sizes (directory) or the zip's size


@functools.cache
def _ascii(name: str) -> str:
    """Lowercase ASCII letters/digits of a name, for usernames and email addresses."""
    if name in ROMANIZED:
        return ROMANIZED[name]
    folded = unicodedata.normalize("NFKD", name.translate(ASCII_FOLD))
    return "".join(c for c in folded if c.isascii() and c.isalnum()).lower() or "user"


class _Rng(random.Random):
    """random.Random with draws 3x cheaper than choice/randrange (bias below n / 2**53)."""

    def below(self, n: int) -> int:
        return int(self.random() * n)

    def pick(self, seq: Sequence[T]) -> T:
        return seq[int(self.random() * len(seq))]

    def weighted(self, seq: Sequence[T], cum_weights: Sequence[int]) -> T:
        return seq[bisect.bisect(cum_weights, self.random() * cum_weights[-1])]


def _guid(rng: _Rng) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _unique(base: str, used: set[str]) -> str:
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}{n}"
    used.add(candidate)
    return candidate


def _chunks(items: list[_Person], cap: int) -> Iterator[list[_Person]]:
    """Split into the fewest parts of at most `cap`, sizes differing by at most one."""
    parts = -(-len(items) // cap)
    if not parts:
        return
    size, extra = divmod(len(items), parts)
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        yield items[start:end]
        start = end


@dataclass(slots=True, eq=False)
class _Person:
    sid: str
    role: str
    given: str
    family: str
    middle: str
    sex: str  # names and demographics agree on it
    schools: list[str]  # org sourcedIds
    enabled: bool = True
    username: str = ""
    email: str = ""
    identifier: str = ""
    user_ids: str = ""
    phone: str = ""
    sms: str = ""
    agents: list[str] = field(default_factory=list)
    grade: int = -1  # index into K12 (students)
    org: int = 0  # index of the home school in District.orgs
    dept: str = ""  # teachers
    room: str = ""
    period: int = 0  # next free period of a teacher
    sections: int = 0


class _Org(NamedTuple):
    sid: str
    name: str
    type: str
    identifier: str
    parent: str
    level: int = -1


class _Section(NamedTuple):
    sid: str
    course: Course
    org: _Org
    teacher: _Person
    code: str
    title: str
    periods: str
    grades: str
    members: list[_Person]


class District:
    """The people, schools and timetable of one synthetic district, before it becomes CSV."""

    def __init__(self, students: int, seed: int, say: Callable[[str], None]) -> None:
        # One stream per concern, so a change in one part leaves the others' output unchanged.
        self.rng_org, self.rng_people, self.rng_staff, self.rng_sched, self.rng_demo = (
            _Rng(f"ingestd-sample:{seed}:{part}")
            for part in ("orgs", "people", "staff", "schedule", "demographics")
        )
        self.used_names: set[str] = set()
        self.sessions = {k: _guid(self.rng_org) for k, *_ in SESSIONS}
        self._orgs(students)
        say("households")
        self.students: list[_Person] = []
        self.guardians: list[_Person] = []
        self._households(students)
        say("schedules")
        self.admins: list[_Person] = []
        self.teachers: list[_Person] = []
        self.staff_no = 100
        self.employee_no = 1000 + self.rng_staff.below(4000)
        self.rooms: dict[tuple[int, str], int] = {}
        self.sections: list[_Section] = []
        self.section_no: dict[tuple[int, str], int] = {}
        self.staff: list[_Person] = []  # the current school's teachers, in hiring order
        self.pools: dict[str, _Person] = {}  # department -> teacher still taking sections
        self._staff_and_sections()

    def _orgs(self, students: int) -> None:
        rng = self.rng_org
        self.state = rng.pick(STATES)
        place = rng.pick(DISTRICT_PLACES)
        # RFC 2606 domain: synthetic addresses can never reach a real inbox.
        self.domain = f"{_ascii(place)}.example.org"
        lea = f"{self.state.fips}{100 + rng.below(99900):05d}"  # NCES-style district id
        self.orgs = [_Org("100", f"{place} {rng.pick(DISTRICT_KINDS)}", "district", lea, "")]
        self.level_orgs: tuple[list[int], ...] = ([], [], [])
        for level, (suffix, lo, hi, size) in enumerate(LEVELS):
            count = max(1, round(students * (hi - lo) / len(K12) / size))
            names = rng.sample(SCHOOL_NAMES, len(SCHOOL_NAMES))
            for i in range(count):
                again = i // len(names)
                name = f"{names[i % len(names)]}{f' {again + 1}' if again else ''} {suffix}"
                n = len(self.orgs)
                self.orgs.append(
                    _Org(str(100000 + n), name, "school", f"{lea}{n:05d}", "100", level)
                )
                self.level_orgs[level].append(n)

    def _name(self, rng: _Rng, sex: str, middle_odds: float) -> tuple[str, str]:
        given = rng.pick(GIVEN_NAMES[sex])
        middle = rng.pick(GIVEN_NAMES[sex]) if rng.random() < middle_odds else ""
        return given, "" if middle == given else middle

    def _households(self, students: int) -> None:
        rng, used, st = self.rng_people, self.used_names, self.state
        number = 10_000 + rng.below(30_000)  # student numbers: 7 digits, leading zeros
        guardian_no = 900_000
        while len(self.students) < students:
            r = rng.random()
            kids = min(students - len(self.students), 1 if r < 0.80 else 2 if r < 0.97 else 3)
            r = rng.random()
            adults = 1 if r < 0.20 else 2 if r < 0.95 else 3  # ~1.5 guardians per student
            family = rng.pick(FAMILY_NAMES)
            hood = rng.random()  # where the family lives decides its schools
            area = rng.pick(st.area_codes)
            guardians = []
            for j in range(adults):
                sex = "female" if rng.random() < (0.6 if j == 0 else 0.4) else "male"
                given, middle = self._name(rng, sex, 0.15)
                surname = family if j == 0 or rng.random() < 0.6 else rng.pick(FAMILY_NAMES)
                guardian_no += 1 + rng.below(4)
                domain = rng.pick(("example.com", "example.net", "example.org"))
                email = _unique(
                    f"{_ascii(given)}.{_ascii(surname)}{10 + rng.below(90)}@{domain}", used
                )
                phone = f"+1{area}55501{rng.below(100):02d}"  # 555-01xx: fictional numbers
                guardians.append(
                    _Person(
                        str(guardian_no), "parent" if rng.random() < 0.88 else "guardian",
                        given, surname, middle, sex, [], rng.random() >= 0.02, email, email,
                        user_ids=f"{{SIS:{guardian_no}}}" if rng.random() < 0.5 else "",
                        phone=phone, sms=phone if rng.random() < 0.6 else "",
                    )
                )  # fmt: skip
            for _ in range(kids):
                grade = rng.below(len(K12))
                schools = self.level_orgs[school_level(grade)]
                org = schools[int(hood * len(schools))]
                sex = "female" if rng.random() < 0.49 else "male"
                given, middle = self._name(rng, sex, 0.55)
                number += 1 + rng.below(3)
                ident = f"{number:07d}"
                username = _unique(f"{_ascii(given)[:1]}{_ascii(family)[:12]}{ident[-4:]}", used)
                ldap = f",{{LDAP:{username}}}" if grade >= 3 else ""  # accounts from grade 3
                kid = _Person(
                    _guid(rng), "student", given, family, middle, sex, [self.orgs[org].sid],
                    rng.random() >= 0.005, username, f"{username}@students.{self.domain}",
                    ident, f"{{SIS:{ident}}}{ldap}", grade=grade, org=org,
                    agents=[g.sid for g in guardians],
                )  # fmt: skip
                self.students.append(kid)
                for g in guardians:
                    g.agents.append(kid.sid)
                    if kid.schools[0] not in g.schools:
                        g.schools.append(kid.schools[0])
            self.guardians.extend(guardians)

    def _staff(self, org: int, role: str, dept: str = "") -> _Person:
        rng = self.rng_staff
        sex = "female" if rng.random() < 0.7 else "male"
        given, middle = self._name(rng, sex, 0.3)
        family = rng.pick(FAMILY_NAMES)
        self.staff_no += 1 + rng.below(5)
        self.employee_no += 1 + rng.below(9)
        emp = f"{self.employee_no:06d}"
        username = _unique(f"{_ascii(given)}.{_ascii(family)}", self.used_names)
        person = _Person(
            f"u{self.staff_no:07d}", role, given, family, middle, sex, [self.orgs[org].sid],
            rng.random() >= 0.01, username, f"{username}@{self.domain}", emp,
            f"{{SIS:{emp}}},{{LDAP:{username}}}", org=org, dept=dept, period=rng.below(7),
        )  # fmt: skip
        if role == "teacher" and dept not in ("SUP", "ADV"):
            person.room = self._room(org, dept)
        return person

    def _room(self, org: int, dept: str) -> str:
        name = NAMED_ROOMS.get(dept, "")
        n = self.rooms.get((org, name), 0)
        self.rooms[org, name] = n + 1
        if name:
            return name if n == 0 else f"{name} {n + 1}"
        return f"{n // 24 + 1}{n % 24 + 1:02d}"  # floor, then room on the floor: 101, 124, 201

    def _staff_and_sections(self) -> None:
        for _ in range(3):  # district office
            self.admins.append(self._staff(0, "administrator"))
        roster = self._choose_courses()
        head_count = Counter(kid.org for kid in self.students)
        for n, org in enumerate(self.orgs[1:], start=1):
            self.admins.append(self._staff(n, "administrator"))  # principal
            if org.level == 2 or head_count[n] > 900:
                self.admins.append(self._staff(n, "administrator"))  # assistant principal
            self.staff, self.pools = [], {}
            if org.level == 0:
                self._elementary_sections(n, roster)
            else:
                self._secondary_sections(n, roster)
            for _ in range(head_count[n] // 150):  # special education, ELL: no classes of their own
                self.staff.append(self._staff(n, "teacher", "SUP"))
            self.teachers.extend(self.staff)
        # A few teachers serve two schools, of the same level where there is another.
        rng = self.rng_sched
        for i in sorted(rng.sample(range(len(self.teachers)), max(1, len(self.teachers) // 30))):
            t = self.teachers[i]
            others = [o for o in self.level_orgs[self.orgs[t.org].level] if o != t.org]
            others = others or [o for o in range(1, len(self.orgs)) if o != t.org]
            t.schools.append(self.orgs[rng.pick(others)].sid)

    def _choose_courses(self) -> dict[tuple[int, str], list[_Person]]:
        """(school, course key) -> its students; elementary: (school, grade index) -> students."""
        rng = self.rng_sched
        roster: dict[tuple[int, str], list[_Person]] = {}
        for kid in self.students:
            if kid.grade < 6:  # one homeroom group takes all its classes together
                roster.setdefault((kid.org, K12[kid.grade]), []).append(kid)
                continue
            taken: list[str] = []
            for options, cum in SLOTS[K12[kid.grade]]:
                for _ in range(10):  # an elective slot must not repeat a course already taken
                    keys = rng.weighted(options, cum)
                    if not any(k in taken for k in keys):
                        break
                else:
                    continue
                taken.extend(keys)
                for key in keys:
                    roster.setdefault((kid.org, key), []).append(kid)
        return roster

    def _elementary_sections(self, n: int, roster: dict[tuple[int, str], list[_Person]]) -> None:
        for g in K12[0:6]:
            for members in _chunks(roster.get((n, g), []), CLASS_CAP["HR"]):
                homeroom = self._staff(n, "teacher", "HR")
                self.staff.append(homeroom)
                for course in (COURSES[k] for (keys,), _ in SLOTS[g] for k in keys):
                    if course.dept == "HR":
                        who, periods = homeroom, ELEMENTARY_PERIODS[course.key[:-2]]
                        title = f"{course.title} - {homeroom.family}"
                    else:  # specialists see every homeroom once a week
                        who, periods = self._teacher(n, course.dept, 30), "6"
                        title = f"{course.title} - {grade_label(g)} - {homeroom.family}"
                    self._add(course, n, who, title, periods, members)

    def _secondary_sections(self, n: int, roster: dict[tuple[int, str], list[_Person]]) -> None:
        advisories = []
        for key in LEVEL_COURSES[self.orgs[n].level]:
            course = COURSES[key]
            members = roster.get((n, key), [])
            self.rng_sched.shuffle(members)  # sections mix students, as a scheduler would
            for part in _chunks(members, CLASS_CAP.get(course.dept, 28)):
                if course.dept == "ADV":
                    advisories.append((course, part))
                    continue
                who = self._teacher(n, course.dept, 5)
                period = str(who.period % 7 + 1)
                self._add(course, n, who, f"{course.title} - Period {period}", period, part)
                who.period += 1
        subject_teachers = list(self.staff)
        for i, (course, part) in enumerate(advisories):  # one advisory per teacher
            if i < len(subject_teachers):
                who = subject_teachers[i]
            else:
                who = self._staff(n, "teacher", "ADV")
                self.staff.append(who)
            self._add(course, n, who, f"{course.title} - {who.family}", "ADV", part)

    def _teacher(self, org: int, dept: str, load: int) -> _Person:
        """The department's teacher with room for one more section (hired when needed)."""
        current = self.pools.get(dept)
        if current is None or current.sections >= load:
            current = self.pools[dept] = self._staff(org, "teacher", dept)
            self.staff.append(current)
        return current

    def _add(self, course: Course, org: int, who: _Person, title: str, periods: str,
             members: list[_Person]) -> None:  # fmt: skip
        who.sections += 1
        number = self.section_no.get((org, course.key), 0) + 1
        self.section_no[org, course.key] = number
        grades = sorted({m.grade for m in members})
        self.sections.append(
            _Section(
                f"{len(self.sections) + 1:07d}", course, self.orgs[org], who,
                f"{course.key}-{number:02d}", title, periods,
                ",".join(K12[g] for g in grades), members,
            )
        )  # fmt: skip


def generate(
    out: Path,
    *,
    students: int = 1000,
    seed: int = 1,
    as_zip: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SampleSummary:
    """Write a synthetic OneRoster 1.1 bulk set: a directory `out`, or with as_zip a zip file `out`.

    The directory is created if missing and existing files of the set are overwritten (other
    files are left alone); the zip has the 8 files at its root. `progress` hears a short phrase
    ("users") as each part is built. Same (students, seed) gives the same bytes.
    """
    if students < 1:
        raise ValueError(f"students must be at least 1, not {students}")
    out = Path(out)
    say = progress or (lambda _phrase: None)
    # The model (~10 objects/student) has no cycles: cyclic GC passes would only rescan it (2x).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _generate(out, students, seed, as_zip, say)
    finally:
        if collecting:
            gc.enable()


def _generate(
    out: Path, students: int, seed: int, as_zip: bool, say: Callable[[str], None]
) -> SampleSummary:
    district = District(students, seed, say)
    sink = SampleSink(out, as_zip)
    rows: dict[str, int] = {}
    try:
        say("manifest")
        sink.put(spec.MANIFEST_FILE, sample_manifest())
        for entity in spec.ENTITIES:  # parents first, the order a reader applies them
            say(entity.name)
            cols = BUILDERS[entity.name](district)
            rows[entity.name] = len(cols["sourcedId"])
            sink.put(entity.file_name, sample_csv(entity, cols))
            del cols  # one file's columns in memory at a time
        written = sink.close()
    except BaseException:
        sink.abort()
        raise
    return SampleSummary(out, rows, written)
