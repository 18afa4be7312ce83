"""Data tables of the synthetic district: course catalogue, schedules, names, places."""

from __future__ import annotations

from typing import NamedTuple

from ingestd.oneroster import spec

# The school year is fixed (never the clock) so that output does not depend on the day.
SCHOOL_YEAR = "2027"
# key, title, type, startDate, endDate, parent key: a Mon-Fri calendar with an MLK-day break.
SESSIONS = (
    ("Y", "2026-2027", "schoolYear", "2026-08-17", "2027-06-04", ""),
    ("S1", "Fall Semester 2026", "semester", "2026-08-17", "2027-01-15", "Y"),
    ("S2", "Spring Semester 2027", "semester", "2027-01-19", "2027-06-04", "Y"),
    ("Q1", "Quarter 1", "gradingPeriod", "2026-08-17", "2026-10-23", "S1"),
    ("Q2", "Quarter 2", "gradingPeriod", "2026-10-26", "2027-01-15", "S1"),
    ("Q3", "Quarter 3", "gradingPeriod", "2027-01-19", "2027-03-26", "S2"),
    ("Q4", "Quarter 4", "gradingPeriod", "2027-03-29", "2027-06-04", "S2"),
)
# Course term -> the sessions in its termSourcedIds (Y: a year-long class lists both semesters).
TERMS = {"Y": ("S1", "S2"), "S1": ("S1",), "S2": ("S2",)}
SPANS = {key: (start, end) for key, _, _, start, end, _ in SESSIONS}
K12 = spec.GRADE_CODES[spec.GRADE_CODES.index("KG") : spec.GRADE_CODES.index("12") + 1]
# name suffix, grade indexes [lo, hi) into K12, students per school (typical US sizes)
LEVELS = (("Elementary School", 0, 6, 450), ("Middle School", 6, 9, 700),
          ("High School", 9, 13, 1300))  # fmt: skip
CLASS_CAP = {"HR": 25, "PE": 35, "MUS": 60, "ADV": 25}  # section size limits; others 28

_SUBJECT = {
    "ELA": "English Language Arts", "MATH": "Mathematics", "SCI": "Science",
    "SS": "Social Studies", "WL": "World Languages", "PE": "Physical Education",
    "ARTS": "Fine Arts", "MUS": "Music", "CTE": "Career and Technical Education",
    "LIB": "Library Media",
}  # fmt: skip
NAMED_ROOMS = {"PE": "Gym", "MUS": "Music Room", "ARTS": "Art Room", "LIB": "Library"}

# key|title|department|SCED-shaped subject code (area first: 01 English...)[|term][|subjects]
# Term Y (default) = both semesters; subjects default to the department's.
_SECONDARY_COURSES = """
ELA06|English Language Arts 6|ELA|01041; ELA07|English Language Arts 7|ELA|01042
ELA08|English Language Arts 8|ELA|01043; ENG9|English 9|ELA|01001; ENG10|English 10|ELA|01002
ENG11|English 11|ELA|01003; ENG12|English 12|ELA|01004; JOUR|Journalism|ELA|01101
APLANG|AP English Language and Composition|ELA|01005; CRWR|Creative Writing|ELA|01104|S2
APLIT|AP English Literature and Composition|ELA|01006; MATH06|Math 6|MATH|02021
MATH07|Math 7|MATH|02022; PREALG|Pre-Algebra|MATH|02051; ALG1|Algebra I|MATH|02052
GEOM|Geometry|MATH|02072; ALG2|Algebra II|MATH|02056; PRECALC|Pre-Calculus|MATH|02110
APCALC|AP Calculus AB|MATH|02124; STATS|Statistics|MATH|02201
FINALG|Financial Algebra|MATH|02157; SCI06|Earth Science|SCI|03001
SCI07|Life Science|SCI|03052; SCI08|Physical Science|SCI|03159; BIO|Biology|SCI|03051
CHEM|Chemistry|SCI|03101; ENVS|Environmental Science|SCI|03003; PHYS|Physics|SCI|03151
APBIO|AP Biology|SCI|03056; ANAT|Anatomy and Physiology|SCI|03053
APCHEM|AP Chemistry|SCI|03106; ESS|Earth and Space Science|SCI|03002
WGEO|World Geography|SS|04001; WHIST|World History|SS|04051; USH08|U.S. History 8|SS|04102
USH|U.S. History|SS|04101; APUSH|AP U.S. History|SS|04104; GOV|U.S. Government|SS|04151|S1
ECON|Economics|SS|04201|S2; PSYCH|Psychology|SS|04254|S1; SOC|Sociology|SS|04258|S2
SPAN1|Spanish I|WL|06101; SPAN2|Spanish II|WL|06102; SPAN3|Spanish III|WL|06103
FREN1|French I|WL|06201; FREN2|French II|WL|06202; FREN3|French III|WL|06203
ASL1|American Sign Language I|WL|06801; ASL2|American Sign Language II|WL|06802
PE|Physical Education|PE|08001; PE1|Physical Education I|PE|08001; HLTH|Health|PE|08051|S1
PE2|Physical Education II|PE|08002|S2; BAND|Concert Band|MUS|05101
CHOIR|Concert Choir|MUS|05110; ORCH|Orchestra|MUS|05105; ARTMS|Exploring Art|ARTS|05153
ARTHS|Art I|ARTS|05154; DRAMA|Drama|ARTS|05051|S1; THEA|Theatre Arts I|ARTS|05052
PHOTO|Photography|ARTS|05162|S2; DIGLIT|Digital Literacy|CTE|10003|S1
CSD|Computer Science Discoveries|CTE|10011|S2|Computer Science
STEM|STEM Design|CTE|21006|S2|Engineering,Technology; CULIN|Culinary Arts|CTE|16052
CSP|AP Computer Science Principles|CTE|10019|Y|Computer Science,Mathematics
ENGR|Introduction to Engineering Design|CTE|21007|Y|Engineering,Technology
PFIN|Personal Finance|CTE|22210|S1
"""

# Per grade: slots separated by ";", each slot "A:weight|B+C:weight" where "B+C" is an S1/S2 pair.
_MS_ELECTIVES = "BAND:3|CHOIR:2|ORCH:2|ARTMS:2|SPAN1:1; HLTH:2|DIGLIT:1|DRAMA:1; CSD|CRWR|STEM"
_HS_ELECTIVE = "ARTHS:3|BAND:2|CHOIR:2|THEA:1|CSP:2|JOUR:1|CULIN:2|ENGR:1|PSYCH+SOC:3|PFIN+PHOTO:2"
_SCHEDULES = {
    **{
        g: f"HR{g}; ELA{g}; MATH{g}; SCI{g}; SS{g}; ARTK5; MUSK5; PEK5; LIBK5+TECHK5"
        for g in K12[0:6]
    },
    "06": f"ELA06; MATH06; SCI06; WGEO; PE; ADV06; {_MS_ELECTIVES}",
    "07": f"ELA07; MATH07:7|PREALG:3; SCI07; WHIST; PE; ADV07; {_MS_ELECTIVES}",
    "08": f"ELA08; PREALG:7|ALG1:3; SCI08; USH08; PE; ADV08; {_MS_ELECTIVES}",
    "09": f"ENG9; ALG1:6|GEOM:4; BIO; WGEO; PE1; SPAN1:6|FREN1:3|ASL1:1; ADV09; {_HS_ELECTIVE}",
    "10": "ENG10; GEOM:55|ALG2:45; CHEM:7|ENVS:3; WHIST; HLTH+PE2; SPAN2:6|FREN2:3|ASL2:1; ADV10; "
    + _HS_ELECTIVE,
    "11": "ENG11:8|APLANG:2; ALG2:5|PRECALC:35|STATS:15; PHYS:5|APBIO:2|ANAT:3; USH:8|APUSH:2; "
    f"SPAN3:4|FREN3:2|{_HS_ELECTIVE}; ADV11; {_HS_ELECTIVE}",
    "12": "ENG12:75|APLIT:25; PRECALC:35|APCALC:25|STATS:25|FINALG:15; "
    f"ESS:4|APCHEM:2|ANAT:2|ENVS:2; GOV+ECON; SPAN3:3|{_HS_ELECTIVE}; ADV12; {_HS_ELECTIVE}",
}
ELEMENTARY_PERIODS = {
    "HR": "HR",
    "ELA": "1,2",
    "MATH": "3",
    "SCI": "4",
    "SS": "5",
}  # literacy block


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


# Names: a US mix with multibyte UTF-8 on purpose; none contains a comma or a double quote.
FAMILY_NAMES = _split(
    "Smith,Johnson,Williams,Brown,Jones,García,Miller,Davis,Rodríguez,Martínez,Hernández,López,"
    "González,Wilson,Anderson,Thomas,Taylor,Moore,Jackson,Martin,Lee,Pérez,Thompson,White,Harris,"
    "Sánchez,Clark,Ramírez,Lewis,Robinson,Walker,Young,Allen,King,Wright,Scott,Torres,Nguyễn,Hill,"
    "Flores,Green,Adams,Nelson,Baker,Hall,Rivera,Campbell,Mitchell,Carter,Roberts,Murphy,Cooper,"
    "Reed,Bailey,Bell,Gómez,Kelly,Howard,Ward,Cox,Díaz,Richardson,Wood,Watson,Brooks,Bennett,"
    "O'Brien,Müller,Schmidt,Kowalski,Nowak,Patel,Shah,Kim,Park,李,王,陈,Trần,Phạm,Okafor,Adeyemi,"
    "Mensah,Haddad,Cohen,Jensen,Ólafsson,Dubois,Rossi,Yamamoto,Satō,Ivanov,Singh,Hussein,Ali,"
    "Mwangi,D'Angelo,Van der Berg,de la Cruz,García-López,Łukasik,Çelik,Byström,Søndergaard"
)
GIVEN_NAMES = {
    "female": _split(
        "Emma,Olivia,Ava,Sophia,Isabella,Mia,Charlotte,Amelia,Harper,Evelyn,Abigail,Emily,Ella,"
        "Madison,Scarlett,Victoria,Aria,Grace,Chloé,Zoë,Camila,Sofía,Valentina,Lucía,Ximena,María,"
        "Ngozi,Amara,Aaliyah,Fatima,Priya,Ananya,Mei,秀英,Linh,Thảo,Yuna,Hana,Ingrid,Åsa,Siobhán,"
        "Renée,Anaïs,Leilani,Nizhoni,Imani,Jasmine,Naomi,Hannah,Elizabeth"
    ),
    "male": _split(
        "Liam,Noah,Oliver,Elijah,James,William,Benjamin,Lucas,Henry,Alexander,Mason,Michael,Ethan,"
        "Daniel,Jacob,Logan,Jackson,Sebastian,Mateo,José,Santiago,Diego,Ángel,Luis,Carlos,Jesús,"
        "Søren,Ólafur,Björn,Chidi,Kwame,Oluwaseun,Mohammed,Omar,Yusuf,Arjun,Rohan,Wei,伟,Minh,Huy,"
        "Hiroshi,Jae-won,Dmitri,Mikhail,Tadeo,Malik,Jamal,Kai,David"
    ),
}
ROMANIZED = {
    "李": "li",
    "王": "wang",
    "陈": "chen",
    "秀英": "xiuying",
    "伟": "wei",
}  # for usernames
ASCII_FOLD = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "ß": "ss", "đ": "d", "ł": "l", "Ł": "L"})
SCHOOL_NAMES = (
    *_split(
        "Lincoln,Washington,Jefferson,Roosevelt,César Chávez,Harriet Tubman,Amelia Earhart,"
        "Sally Ride,Sonia Sotomayor,Rosa Parks,Frederick Douglass,Sacagawea,Helen Keller,Franklin,"
        "Madison,Kennedy,Thurgood Marshall,Maya Angelou,Ellen Ochoa,Dolores Huerta,Sequoyah,"
        "Mae Jemison"
    ),
    *(
        f"{a} {b}"
        for a in _split("Maple,Cedar,Willow,Pine,Oak,Aspen,Birch,Elm,Juniper,Sycamore,Cottonwood")
        for b in _split("Ridge,Creek,Valley,Park,Hill,Grove,Meadow,Lake,Springs,Crossing")
    ),
)
DISTRICT_PLACES = ("Cedar Valley", "Riverbend", "Maple Hills", "Lakeview", "Pine Ridge")
DISTRICT_KINDS = ("Unified School District", "Public Schools", "School District")


class State(NamedTuple):
    abbr: str
    fips: str  # leading zeros kept: NCES-style identifiers start with it
    area_codes: tuple[str, ...]
    cities: tuple[str, ...]


STATES = (
    State("OR", "41", ("503", "541", "971"), ("Portland", "Salem", "Eugene", "Bend", "Medford")),
    State("CO", "08", ("303", "720", "970"), ("Denver", "Aurora", "Boulder", "Pueblo", "Greeley")),
    State("CA", "06", ("408", "510", "559"), ("San José", "Fresno", "Oakland", "Salinas")),
    State("TX", "48", ("512", "210", "915"), ("Austin", "San Antonio", "El Paso", "Laredo")),
    State("MN", "27", ("612", "651", "218"), ("Minneapolis", "Saint Paul", "Duluth", "Rochester")),
)
OTHER_STATES = ("CA", "TX", "FL", "NY", "WA", "IL", "AZ", "GA", "PR")
ABROAD = (
    ("MX", "Guadalajara"), ("VN", "Hồ Chí Minh City"), ("CN", "Shanghai"), ("IN", "Pune"),
    ("SV", "San Salvador"), ("PH", "Quezon City"), ("SO", "Mogadishu"), ("UA", "Kyiv"),
    ("DE", "München"), ("NG", "Lagos"), ("GT", "Quetzaltenango"), ("KR", "Seoul"),
    ("BR", "São Paulo"), ("IS", "Reykjavík"),
)  # fmt: skip
# Race flag columns set for each category (weights roughly US public-school enrollment).
RACES = ((), ("white",), ("blackOrAfricanAmerican",), ("asian",),
         ("americanIndianOrAlaskaNative",), ("nativeHawaiianOrOtherPacificIslander",),
         ("white", "asian"), ("white", "blackOrAfricanAmerican"))  # fmt: skip
RACE_CUM = (2, 58, 76, 88, 90, 91, 95, 100)
RACE_COLS = ("americanIndianOrAlaskaNative", "asian", "blackOrAfricanAmerican",
             "nativeHawaiianOrOtherPacificIslander", "white")  # fmt: skip
# CEDS publicSchoolResidenceStatus option codes (leading zero kept); "" = not reported.
RESIDENCE = ("01652", "01653", "01654", "")
RESIDENCE_CUM = (80, 92, 97, 100)


class Course(NamedTuple):
    key: str  # also the courseCode
    title: str
    dept: str  # teaching department; HR = taught by the elementary homeroom teacher
    term: str  # Y, S1 or S2
    sced: str = ""
    subjects: str = ""


def _catalogue() -> dict[str, Course]:
    courses: dict[str, Course] = {}
    for entry in _SECONDARY_COURSES.replace("\n", ";").strip(";").split(";"):
        key, title, dept, sced, *rest = entry.strip().split("|")
        term = rest[0] if rest else "Y"
        subjects = rest[1] if len(rest) > 1 else _SUBJECT[dept]
        courses[key] = Course(key, title, dept, term, sced, subjects)
    for g in K12[0:6]:
        label = grade_label(g)
        courses[f"HR{g}"] = Course(f"HR{g}", f"{label} Homeroom", "HR", "Y")
        for area, title in (("ELA", "English Language Arts"), ("MATH", "Mathematics"),
                            ("SCI", "Science"), ("SS", "Social Studies")):  # fmt: skip
            courses[f"{area}{g}"] = Course(f"{area}{g}", f"{label} {title}", "HR", "Y", "", title)
    specials = (("ARTK5", "Art", "ARTS", "Y"), ("MUSK5", "General Music", "MUS", "Y"),
                ("PEK5", "Physical Education", "PE", "Y"), ("LIBK5", "Library", "LIB", "S1"),
                ("TECHK5", "Technology", "CTE", "S2"))  # fmt: skip
    for key, title, dept, term in specials:
        courses[key] = Course(key, title, dept, term, "", _SUBJECT[dept])
    for g in K12[6:13]:
        courses[f"ADV{g}"] = Course(f"ADV{g}", f"Advisory {int(g)}", "ADV", "Y")
    return courses


def grade_label(g: str) -> str:
    return "Kindergarten" if g == "KG" else f"Grade {int(g)}"


Slot = tuple[tuple[tuple[str, ...], ...], tuple[int, ...]]  # options, cumulative weights


def _parse_slots(text: str) -> tuple[Slot, ...]:
    slots = []
    for part in text.split(";"):
        options, cum, total = [], [], 0
        for option in part.strip().split("|"):
            keys, _, weight = option.partition(":")
            total += int(weight or 1)
            options.append(tuple(keys.split("+")))
            cum.append(total)
        slots.append((tuple(options), tuple(cum)))
    return tuple(slots)


COURSES = _catalogue()
SLOTS = {g: _parse_slots(text) for g, text in _SCHEDULES.items()}


def school_level(grade: int) -> int:
    """0 elementary, 1 middle, 2 high, for a grade index into K12."""
    return next(i for i, (_, lo, hi, _) in enumerate(LEVELS) if lo <= grade < hi)


def _index_courses() -> tuple[tuple[list[str], ...], dict[str, list[str]]]:
    """Each level's courses in schedule order, and the grades each course serves."""
    by_level: tuple[list[str], ...] = ([], [], [])
    grades: dict[str, list[str]] = {}
    for index, g in enumerate(K12):
        for options, _ in SLOTS[g]:
            for key in (k for keys in options for k in keys):
                if key not in by_level[school_level(index)]:
                    by_level[school_level(index)].append(key)
                if g not in grades.setdefault(key, []):
                    grades[key].append(g)
    return by_level, grades


LEVEL_COURSES, COURSE_GRADES = _index_courses()
