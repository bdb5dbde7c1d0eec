"""Cases of bad and edge input for the contract gate, shared by the rejection tests, the quick
and careful SQL passes' test, and the test that the client screen and PostgreSQL agree."""

from flows.specs import Column

# raw.airports of the flights dataset
HEADER = "faa,name,lat,lon,alt,tz,dst,tzone"
GOOD = "04G,Lansdowne Airport,41.1304722,-80.6195833,1044,-5,A,America/New_York"
SECOND = "LGA,La Guardia,40.7,-73.8,22,-5,A,America/New_York"

# name -> (file content, message the rejection matches)
FORMAT_ERRORS: dict[str, tuple[str | bytes, str]] = {
    "wrong column count": (
        f"{HEADER}\nJFK,John F Kennedy,40.6,-73.7,13,-5,A,America/New_York\nLGA,La Guardia,40.7\n",
        r"drop\.csv, line 3.*wrong column count",
    ),
    "missing header": (
        f"{GOOD}\n",
        r"drop\.csv, line 1: missing header",
    ),
    "undecodable bytes": (
        f"{HEADER}\nJFK,John F Kennedy,40.6,-73.7,13,-5,A,America/New_York\n".encode()
        + b"LGA,La Guardia \xff\xfe,40.7,-73.8,22,-5,A,America/New_York\n",
        r"drop\.csv, line 3.*undecodable bytes",
    ),
    "empty file": ("", r"drop\.csv: empty file"),
    "header only": (f"{HEADER}\n", r"rule min_rows failed"),
    "unknown column": (
        f'{HEADER},"x"";DROP TABLE raw.airports;--"\n{GOOD},1\n',
        r"drop\.csv, line 1: header has unknown column\(s\) \['x\";DROP TABLE raw\.airports;--'\]",
    ),
    "missing column": (
        "faa,name,lat,lon,alt,tz,dst\n04G,Lansdowne,41.1,-80.6,1044,-5,A\n",
        r"header lacks column\(s\) \['tzone'\]",
    ),
}

# name -> (a line breaking one rule, the rule, its column, the value); the line comes third,
# after the header and SECOND.
RULE_BREAKS = {
    "type": ("JFK,Kennedy,forty,-73.7,13,-5,A,America/New_York", "type", "lat", "forty"),
    "not_null": ("JFK,NA,40.6,-73.7,13,-5,A,America/New_York", "not_null", "name", "NA"),
    "min": ("JFK,Kennedy,-91,-73.7,13,-5,A,America/New_York", "min", "lat", "-91"),
    "max": ("JFK,Kennedy,40.6,-73.7,13,15,A,America/New_York", "max", "tz", "15"),
    "accepted_values": (
        "JFK,Kennedy,40.6,-73.7,13,-5,X,America/New_York",
        "accepted_values",
        "dst",
        "X",
    ),
}


def rule_break_drop(bad_line: str) -> str:
    return f"{HEADER}\n{SECOND}\n{bad_line}\n"


DUPLICATE_KEY = f"{HEADER}\n{GOOD}\n{GOOD}\n"

# One value that does not parse, another out of range.
UNPARSEABLE_AND_OUT_OF_RANGE = (
    f"{HEADER}\n"
    "JFK,Kennedy,forty,-73.7,13,-5,A,America/New_York\n"
    "LGA,La Guardia,40.7,-273.8,22,-5,A,America/New_York\n"
)

# One column's values near its rules' edges (None is NULL; "NA" the null marker).
EDGE_VALUES = [None, "NA", "", "0", "-0", " 7 ", "+7", "2400", "2401", "-1", "1e3", "12.0"]
NUMBER_EDGES = EDGE_VALUES + ["NaN", "Infinity", "-Infinity", "2400.0000001", "1.5e2"]
EDGE_MARKERS = ["NA"]
EDGE_RULES = {
    "int-range": Column(type="integer", min=0, max=2400),
    "int-not-null-min": Column(type="integer", not_null=True, min=0),
    "number-range": Column(type="number", min=0, max=2400),
    "number-not-null": Column(type="number", not_null=True),
    "text-accepted": Column(type="text", not_null=True, accepted=["0", "7"]),
}


def edge_values(rules: Column) -> list[str | None]:
    return NUMBER_EDGES if rules.type == "number" else EDGE_VALUES
