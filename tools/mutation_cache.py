"""Keep mutmut's verdicts between clones: `save` after a run, `restore` before one.

mutmut keeps each mutant's verdict in ``mutants/<module>.py.meta`` next to a hash of every
function, and on the next run tests again only the mutants of functions whose hash changed.
``mutants/`` is not committed, so a fresh clone would start the whole run (hours on this
machine) again. ``save`` writes the verdicts and hashes to ``tests/mutation-results.json``
(committed, one line per mutant); ``restore`` writes them back as ``.meta`` files where
``mutants/`` has none, so mutmut resumes: functions changed since keep no verdict and run again,
and so do the survivors that ``tests/mutation-survivors/`` says a later test kills.

Verdicts are kept by mutant name (``x_read__mutmut_7``), and another mutmut release may number
a function's mutants differently, so the file records the mutmut version that made it, and
``restore`` refuses a file of another version (pyproject pins 3.8.1: 3.8.0 fails under pytest 9).
With ``mutate_only_covered_lines`` the numbering also follows what the tests cover: a test
added since the verdicts were saved can give an unchanged function more mutants, and the
restored names then point at other mutants. ``verify`` (run by ``make mutation`` after mutmut)
finds every function whose generated mutants are not the ones ``file`` holds verdicts for and
clears its verdicts; the next ``make mutation`` tests them on the numbering of this mutants/.

    python tools/mutation_cache.py save|restore|verify [--mutants mutants] [--file FILE]
                                  [--lists DIR] [--mutmut-version X.Y.Z]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

DEFAULT_FILE = Path("tests/mutation-results.json")
VERSION_KEY = "__mutmut_version__"
"""The file's first key: the mutmut release whose numbering the verdicts use."""
UNSTAMPED = "3.8.1"
"""The release that wrote files made before the stamp existed."""


def mutmut_version() -> str:
    """The installed mutmut's version (``"none"`` when it is not installed)."""
    try:
        return version("mutmut")
    except PackageNotFoundError:
        return "none"


def hashes_of(meta: dict[str, Any]) -> dict[str, str]:
    """The function hashes of one ``.meta`` file (older mutmut versions had none)."""
    hashes: dict[str, str] = meta.get("hash_by_function_name", {})
    return hashes


def save(mutants: Path, file: Path, made_with: str) -> int:
    """Verdicts and function hashes of every module in ``mutants/``, into ``file``."""
    modules: dict[str, dict[str, Any]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        if data["exit_code_by_key"]:
            modules[str(meta.relative_to(mutants)).removesuffix(".meta")] = {
                "hash_by_function_name": dict(sorted(hashes_of(data).items())),
                "exit_code_by_key": dict(sorted(data["exit_code_by_key"].items())),
            }
    lines = ["{", f"{json.dumps(VERSION_KEY)}: {json.dumps(made_with)},"]
    for number, (module, data) in enumerate(modules.items()):
        lines.append(f"{json.dumps(module)}: {{")
        hashes = json.dumps(data["hash_by_function_name"], ensure_ascii=False)
        lines.append(f'"hash_by_function_name": {hashes},')
        lines.append('"exit_code_by_key": {')
        codes = list(data["exit_code_by_key"].items())
        lines += [f"{json.dumps(name, ensure_ascii=False)}: {json.dumps(code)}"
                  + ("," if index < len(codes) - 1 else "")
                  for index, (name, code) in enumerate(codes)]
        lines.append("}}" + ("," if number < len(modules) - 1 else ""))
    lines.append("}")
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"saved the verdicts of {sum(len(d['exit_code_by_key']) for d in modules.values())} "
          f"mutants in {len(modules)} modules to {file}")
    return 0


def killed_since(lists: Path) -> set[str]:
    """Survivors that a test added after their run kills (``<name> killed: <test>`` lines)."""
    names: set[str] = set()
    for path in sorted(lists.glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            name, _, reason = line.strip().partition(" ")
            if reason.startswith("killed: "):
                names.add(name)
    return names


def restore(mutants: Path, file: Path, lists: Path, running: str) -> int:
    """Write ``file``'s verdicts as mutmut's ``.meta`` files where ``mutants/`` has none."""
    if not file.exists():
        print(f"no {file}: nothing to restore")
        return 0
    modules: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    made_by = modules.pop(VERSION_KEY, UNSTAMPED)
    if made_by != running:
        print(f"{file} holds verdicts numbered by mutmut {made_by}, but mutmut "
              f"{running} is installed: its mutant names differ, so the verdicts would "
              f"land on other mutants. Install mutmut=={made_by} (`pip install -e "
              f"'.[mutation]'`), or delete {file} to start a whole run with this version.",
              file=sys.stderr)
        return 1
    written = 0
    again = killed_since(lists)
    for module, data in modules.items():
        data["exit_code_by_key"] = {name: None if name in again else code
                                    for name, code in data["exit_code_by_key"].items()}
        meta = mutants / f"{module}.meta"
        if meta.exists():
            continue
        meta.parent.mkdir(parents=True, exist_ok=True)
        empty: dict[str, Any] = {"durations_by_key": {}, "estimated_durations_by_key": {}}
        meta.write_text(json.dumps({**data, **empty}))
        written += 1
    print(f"restored the verdicts of {written} modules from {file} into {mutants}/")
    return 0


MUTANT_DEF = re.compile(r"^\s*(?:async\s+)?def\s+(x\S+?)__mutmut_(\d+)\(", re.MULTILINE)


def function_of(name: str) -> str:
    """``pkg.mod.xǁCǁf__mutmut_3`` → ``xǁCǁf``."""
    return name.rpartition(".")[2].rpartition("__mutmut_")[0]


def verify(mutants: Path, file: Path) -> int:
    """Clear the restored verdicts of every function whose generated mutants differ in number
    from those ``file`` has verdicts for under the same function hash (its names were restored
    onto other mutants); verdicts a run made in this tree stay. 1 if any was cleared."""
    if not file.exists():
        return 0
    cached: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    cached.pop(VERSION_KEY, None)
    cleared: Counter[str] = Counter()
    for module, data in cached.items():
        meta_path, source = mutants / f"{module}.meta", mutants / module
        if not meta_path.exists() or not source.exists():
            continue
        meta = json.loads(meta_path.read_text())
        generated = Counter(fn for fn, _ in MUTANT_DEF.findall(source.read_text()))
        had = Counter(function_of(name) for name in data["exit_code_by_key"])
        hashes = hashes_of(meta)
        shifted = {fn for fn, digest in data["hash_by_function_name"].items()
                   if hashes.get(fn) == digest and generated[fn] != had[fn]}
        codes = meta["exit_code_by_key"]
        # a verdict this mutants/ tree produced (tested: a duration; rejected by mypy: its
        # error) is about the mutant of that name here: only restored ones are cleared
        made_here = set(meta.get("durations_by_key") or {}) | set(
            meta.get("type_check_error_by_key") or {})
        for name, code in codes.items():
            if code is not None and function_of(name) in shifted and name not in made_here:
                codes[name] = None
                cleared[module] += 1
        if cleared[module]:
            meta_path.write_text(json.dumps(meta))
    if not cleared:
        return 0
    print(f"cleared {sum(cleared.values())} verdicts restored onto other mutants (the tests now "
          f"cover more of {len(cleared)} modules, so their mutants are numbered anew): run "
          "`make mutation` again to test them", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("action", choices=["save", "restore", "verify"])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--lists", type=Path, default=Path("tests/mutation-survivors"))
    parser.add_argument("--mutmut-version", default=None,
                        help="the mutmut release the run uses (default: the installed one)")
    args = parser.parse_args(argv)
    running = args.mutmut_version or mutmut_version()
    if args.action == "verify":
        return verify(args.mutants, args.file)
    if args.action == "save":
        if not args.mutants.is_dir():
            print(f"no {args.mutants}/ here: run `make mutation` first", file=sys.stderr)
            return 1
        return save(args.mutants, args.file, running)
    return restore(args.mutants, args.file, args.lists, running)


if __name__ == "__main__":
    sys.exit(main())
