"""Score a `make mutation` run per module and check that every survivor is accounted for.

Reads mutmut's results (``mutants/**/*.py.meta``) and the lists in ``tests/mutation-survivors/``
(one ``.txt`` per module, one surviving mutant per line: ``<name> equivalent: <reason>``,
``<name> gap: <what no test pins yet>``, or ``<name> killed: <test>`` for a survivor that a
test added after the run kills; ``tools/mutation_cache.py restore`` drops the verdicts of those
so that the next run tests them again). Prints, per module, how many mutants
were killed by a test, rejected by ``mypy --strict``, timed out, survived or were not run,
the score (caught / run), and every survivor that the file does not list.

Exit status: 0 when every survivor is listed and the score is at least ``--target``; 1 otherwise.

    python tools/mutation_report.py [--target 85] [--mutants mutants] [--lists DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit codes (mutmut/stats.py), grouped into this report's columns.
KILLED: dict[int | None, str] = {
    1: "killed", 3: "killed", 37: "mypy",
    36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
}
SURVIVED: dict[int | None, str] = {0: "survived"}
NOT_RUN: dict[int | None, str] = {
    None: "not run", 33: "no tests", 5: "no tests", 34: "skipped", 2: "interrupted",
}


def status(code: int | None) -> str:
    """mutmut's exit code of a mutant's test run, as one of this report's columns."""
    for table in (KILLED, SURVIVED, NOT_RUN):
        if code in table:
            return table[code]
    return "suspicious"


def load_results(mutants: Path) -> dict[str, dict[str, int | None]]:
    """Module path → {mutant name: exit code} for every module mutmut generated."""
    results: dict[str, dict[str, int | None]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            results[str(meta.relative_to(mutants)).removesuffix(".meta")] = codes
    return results


KINDS = ("equivalent: ", "gap: ", "killed: ")


def load_listed(lists: Path) -> dict[str, str]:
    """Mutant name → "equivalent: …", "gap: …" or "killed: …", from the committed lists."""
    listed: dict[str, str] = {}
    for path in sorted(lists.glob("*.txt")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            name, _, reason = text.partition(" ")
            if not reason.startswith(KINDS):
                raise SystemExit(f"{path}:{number}: write '{name} equivalent: <why>', "
                                 f"'{name} gap: <what no test pins>' or '{name} killed: <test>'")
            listed[name] = reason
    return listed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--lists", type=Path, default=Path("tests/mutation-survivors"))
    parser.add_argument("--target", type=float, default=85.0)
    args = parser.parse_args(argv)
    if not args.mutants.is_dir():
        print(f"no {args.mutants}/ here: run `make mutation` first", file=sys.stderr)
        return 1
    results = load_results(args.mutants)
    listed = load_listed(args.lists)
    columns = ["killed", "mypy", "timeout", "survived", "suspicious", "not run", "no tests"]
    print(f"{'module':<44}" + "".join(f"{c:>10}" for c in columns) + f"{'score':>8}{'listed':>8}")
    total: Counter[str] = Counter()
    unaccounted: list[str] = []
    for module, codes in results.items():
        counts = Counter(status(code) for code in codes.values())
        survivors = [name for name, code in codes.items()
                     if status(code) in ("survived", "suspicious")]
        accounted = sum(name in listed for name in survivors)
        unaccounted += [name for name in survivors if name not in listed]
        total.update(counts)
        total["listed"] += accounted
        print(f"{module:<44}" + "".join(f"{counts[c]:>10}" for c in columns)
              + f"{score(counts):>8}{accounted:>8}")
    print(f"{'total':<44}" + "".join(f"{total[c]:>10}" for c in columns)
          + f"{score(total):>8}{total['listed']:>8}")
    caught = total["killed"] + total["mypy"] + total["timeout"]
    run = caught + total["survived"] + total["suspicious"]
    reasons = [listed[name] for codes in results.values() for name in codes if name in listed
               and status(codes[name]) in ("survived", "suspicious")]
    equivalent = sum(reason.startswith("equivalent") for reason in reasons)
    gaps = sum(reason.startswith("gap") for reason in reasons)
    killed_since = len(reasons) - equivalent - gaps
    print(f"\ncaught {caught} of {run} run ({score(total)}); survivors: {equivalent} equivalent, "
          f"{gaps} known gaps, {killed_since} killed by tests added since the run, "
          f"{len(unaccounted)} not listed; {total['not run'] + total['no tests']} not run")
    if killed_since:
        print(f"with those added tests: {100 * (caught + killed_since) / run:.1f}% "
              "(the next run confirms them)")
    if run - equivalent:
        print(f"caught, equivalents left out: "
              f"{100 * (caught + killed_since) / (run - equivalent):.1f}%")
    for name in unaccounted:
        print(f"  not listed: {name}")
    ok = not unaccounted and run > 0 and 100 * caught / run >= args.target
    return 0 if ok else 1


def score(counts: Counter[str]) -> str:
    """Caught (killed by a test, rejected by mypy, or timed out) over run, as a percentage."""
    caught = counts["killed"] + counts["mypy"] + counts["timeout"]
    run = caught + counts["survived"] + counts["suspicious"]
    return f"{100 * caught / run:.1f}%" if run else "-"


if __name__ == "__main__":
    sys.exit(main())
