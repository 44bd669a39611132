"""tools/mutation_report.py: the score of a mutation run and the survivors nobody accounted for.

Run as `make mutation` runs it (a subprocess), over a small results tree written here in
mutmut's format.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutation_report.py"
MODULE = "actionbus.workers.reader"


def results(tmp_path: Path, codes: dict[str, int | None]) -> Path:
    """A mutants/ tree holding one module's mutmut results."""
    meta = tmp_path / "mutants" / "actionbus" / "workers" / "reader.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path / "mutants"


def report(tmp_path: Path, lists: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the tool over tmp_path's mutants/ with the given survivor lists."""
    folder = tmp_path / "lists"
    folder.mkdir(exist_ok=True)
    for name, text in lists.items():
        (folder / name).write_text(text)
    return subprocess.run(
        [sys.executable, str(TOOL), "--mutants", str(tmp_path / "mutants"), "--lists", str(folder),
         *args],
        capture_output=True, text=True, timeout=30,
    )


def mutants(killed: int, survived: int, mypy: int = 0, not_run: int = 0) -> dict[str, int | None]:
    """Names and exit codes: 1 killed, 0 survived, 37 rejected by mypy, None not run."""
    codes: dict[str, int | None] = {}
    for code, count in ((1, killed), (0, survived), (37, mypy), (None, not_run)):
        for _ in range(count):
            codes[f"{MODULE}.x_read__mutmut_{len(codes) + 1}"] = code
    return codes


def test_score_counts_mypy_rejections_as_caught_and_leaves_out_what_did_not_run(
    tmp_path: Path,
) -> None:
    """Score = (killed + rejected by mypy) / (those plus survivors); unrun mutants are not in it."""
    results(tmp_path, mutants(killed=80, survived=10, mypy=10, not_run=50))
    survivors = "".join(f"{MODULE}.x_read__mutmut_{n} equivalent: log text\n"
                        for n in range(81, 91))
    done = report(tmp_path, {f"{MODULE}.txt": survivors})
    assert "caught 90 of 100 run (90.0%)" in done.stdout
    assert "10 equivalent, 0 known gaps, 0 killed by tests added since the run, 0 not listed; " \
        "50 not run" in done.stdout
    assert done.returncode == 0, done.stdout


def test_a_survivor_not_listed_is_named_and_fails_the_run(tmp_path: Path) -> None:
    """Every survivor must be listed: one that is not is printed by name, exit status 1."""
    results(tmp_path, mutants(killed=95, survived=2))
    done = report(tmp_path, {f"{MODULE}.txt": f"{MODULE}.x_read__mutmut_96 gap: untested\n"})
    assert f"not listed: {MODULE}.x_read__mutmut_97" in done.stdout
    assert f"not listed: {MODULE}.x_read__mutmut_96" not in done.stdout
    assert "0 equivalent, 1 known gaps, 0 killed by tests added since the run, 1 not listed" \
        in done.stdout
    assert done.returncode == 1


def test_a_score_under_the_target_fails_the_run(tmp_path: Path) -> None:
    """All survivors listed but 80% caught against an 85% target: exit status 1."""
    results(tmp_path, mutants(killed=8, survived=2))
    lines = "".join(f"{MODULE}.x_read__mutmut_{n} equivalent: same result\n" for n in (9, 10))
    done = report(tmp_path, {f"{MODULE}.txt": lines})
    assert "caught 8 of 10 run (80.0%)" in done.stdout
    assert "caught, equivalents left out: 100.0%" in done.stdout
    assert done.returncode == 1
    assert report(tmp_path, {}, "--target", "80").returncode == 0


@pytest.mark.parametrize("line", ["x_read__mutmut_1", "x_read__mutmut_1 maybe: later"])
def test_a_list_line_without_a_kind_and_reason_is_refused_with_its_place(
    tmp_path: Path, line: str
) -> None:
    """A line must say `equivalent: why` or `gap: what`; otherwise the file and line are named."""
    results(tmp_path, mutants(killed=1, survived=0))
    done = report(tmp_path, {f"{MODULE}.txt": f"# header\n{line}\n"})
    assert done.returncode == 1
    assert f"{MODULE}.txt:2:" in done.stderr
    assert "equivalent: <why>" in done.stderr


def test_without_a_run_it_says_to_run_make_mutation(tmp_path: Path) -> None:
    """No mutants/ directory: a one-line hint, exit status 1."""
    done = report(tmp_path, {})
    assert done.returncode == 1
    assert "run `make mutation` first" in done.stderr


def test_a_survivor_killed_by_a_later_test_is_accounted_and_scored_apart(tmp_path: Path) -> None:
    """`killed: <test>` accounts for a survivor; the score with it is given beside the run's."""
    results(tmp_path, mutants(killed=8, survived=2))
    lines = (f"{MODULE}.x_read__mutmut_9 killed: tests/workers/test_reader.py::test_x\n"
             f"{MODULE}.x_read__mutmut_10 equivalent: same result\n")
    done = report(tmp_path, {f"{MODULE}.txt": lines}, "--target", "80")
    assert "1 equivalent, 0 known gaps, 1 killed by tests added since the run, 0 not listed" \
        in done.stdout
    assert "with those added tests: 90.0%" in done.stdout
    assert done.returncode == 0, done.stdout


def test_the_cache_keeps_verdicts_and_drops_those_a_later_test_kills(tmp_path: Path) -> None:
    """save then restore into an empty mutants/ gives the same verdicts and function hashes,
    except a survivor listed as `killed:`, which gets no verdict so that mutmut runs it again."""
    codes = mutants(killed=2, survived=2, mypy=1, not_run=1)
    mutants_dir = results(tmp_path, codes)
    meta = mutants_dir / "actionbus" / "workers" / "reader.py.meta"
    meta.write_text(json.dumps({
        "exit_code_by_key": codes, "hash_by_function_name": {"x_read": "ab"},
        "durations_by_key": {}, "estimated_durations_by_key": {},
    }))
    cache = tmp_path / "results.json"
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / f"{MODULE}.txt").write_text(f"{MODULE}.x_read__mutmut_3 killed: tests/x.py::test_y\n")
    tool = TOOL.with_name("mutation_cache.py")
    for action, folder in (("save", mutants_dir), ("restore", tmp_path / "again")):
        subprocess.run([sys.executable, str(tool), action, "--mutants", str(folder), "--file",
                        str(cache), "--lists", str(lists), "--mutmut-version", "3.8.0"],
                       check=True, timeout=30)
    restored = json.loads((tmp_path / "again" / "actionbus" / "workers" / "reader.py.meta")
                          .read_text())
    assert restored["hash_by_function_name"] == {"x_read": "ab"}
    assert restored["exit_code_by_key"] == {**codes, f"{MODULE}.x_read__mutmut_3": None}


def test_restore_never_overwrites_the_verdicts_of_a_run_in_mutants(tmp_path: Path) -> None:
    """A module that already has a `.meta` in mutants/ keeps it: restore only fills the gaps."""
    live = {f"{MODULE}.x_read__mutmut_1": 1}
    mutants_dir = results(tmp_path, live)
    cache = tmp_path / "results.json"
    cache.write_text(json.dumps({"actionbus/workers/reader.py": {
        "hash_by_function_name": {}, "exit_code_by_key": {f"{MODULE}.x_read__mutmut_1": 0}}}))
    subprocess.run([sys.executable, str(TOOL.with_name("mutation_cache.py")), "restore",
                    "--mutants", str(mutants_dir), "--file", str(cache),
                    "--lists", str(tmp_path), "--mutmut-version", "3.8.1"], check=True, timeout=30)
    meta = mutants_dir / "actionbus" / "workers" / "reader.py.meta"
    assert json.loads(meta.read_text())["exit_code_by_key"] == live


def test_restore_refuses_verdicts_of_another_mutmut_release(tmp_path: Path) -> None:
    """Verdicts saved by one mutmut release are not restored under another (its mutant
    numbering differs): restore exits 1 naming both versions and writes no `.meta`."""
    codes = mutants(killed=1, survived=1)
    cache = tmp_path / "results.json"
    tool = TOOL.with_name("mutation_cache.py")
    subprocess.run([sys.executable, str(tool), "save", "--mutants", str(results(tmp_path, codes)),
                    "--file", str(cache), "--mutmut-version", "3.8.0"], check=True, timeout=30)
    assert json.loads(cache.read_text())["__mutmut_version__"] == "3.8.0"
    again = tmp_path / "again"
    refused = subprocess.run([sys.executable, str(tool), "restore", "--mutants", str(again),
                              "--file", str(cache), "--lists", str(tmp_path),
                              "--mutmut-version", "3.8.1"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert "numbered by mutmut 3.8.0, but mutmut 3.8.1 is installed" in refused.stderr
    assert not list(again.rglob("*.meta"))


def test_verify_clears_verdicts_restored_onto_renumbered_mutants(tmp_path: Path) -> None:
    """A function that now has more mutants than the cache has verdicts for (same hash: the
    tests cover more of it) gets its restored verdicts cleared, exit 1; a verdict a run made
    in this tree (it has a duration) stays, and so do the verdicts of a function whose
    mutants are the ones cached."""
    module = tmp_path / "mutants" / "actionbus" / "workers" / "reader.py"
    module.parent.mkdir(parents=True)
    module.write_text("".join(f"def x_read__mutmut_{i}():\n    pass\n" for i in (1, 2, 3))
                      + "async def x_keep__mutmut_1():\n    pass\n")
    live = {f"{MODULE}.x_read__mutmut_1": 1, f"{MODULE}.x_read__mutmut_2": 0,
            f"{MODULE}.x_read__mutmut_3": 0, f"{MODULE}.x_keep__mutmut_1": 0}
    hashes = {"x_read": "ab", "x_keep": "cd"}
    meta = module.with_name("reader.py.meta")
    meta.write_text(json.dumps({"exit_code_by_key": live, "hash_by_function_name": hashes,
                                "durations_by_key": {f"{MODULE}.x_read__mutmut_3": 1.5}}))
    cache = tmp_path / "results.json"
    cache.write_text(json.dumps({"actionbus/workers/reader.py": {
        "hash_by_function_name": hashes,
        "exit_code_by_key": {f"{MODULE}.x_read__mutmut_1": 1, f"{MODULE}.x_read__mutmut_2": 0,
                             f"{MODULE}.x_keep__mutmut_1": 0}}}))
    done = subprocess.run([sys.executable, str(TOOL.with_name("mutation_cache.py")), "verify",
                           "--mutants", str(tmp_path / "mutants"), "--file", str(cache)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "cleared 2 verdicts" in done.stderr
    assert json.loads(meta.read_text())["exit_code_by_key"] == {
        f"{MODULE}.x_read__mutmut_1": None, f"{MODULE}.x_read__mutmut_2": None,
        f"{MODULE}.x_read__mutmut_3": 0, f"{MODULE}.x_keep__mutmut_1": 0}
