"""Print the N slowest tests of pytest JUnit reports (the tiers of `make test` together).

    python .ci/slowest.py 25 REPORT.xml [REPORT.xml ...]
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(argv: list[str]) -> int:
    count, reports = int(argv[0]), [Path(p) for p in argv[1:]]
    cases = []
    for report in reports:
        if not report.is_file():
            continue
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            cases.append((float(case.get("time", 0)), name, report.stem))
    total = sum(t for t, _, _ in cases)
    print(f"\n{len(cases)} tests, {total:.0f} s of test time; the {count} slowest:")
    for seconds, name, tier in sorted(cases, reverse=True)[:count]:
        print(f"{seconds:8.1f} s  {tier:<5} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
