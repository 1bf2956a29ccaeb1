"""The README's generated parts match what generates them."""

import re
from pathlib import Path

from testbed.algorithms import ALGORITHMS, algorithm_table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_algorithm_table_is_the_registry_table():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- algorithms:start -->\n(.*?)<!-- algorithms:end -->", text, re.S)
    assert m, "README.md lost its generated algorithm table"
    assert m.group(1) == algorithm_table(), "README's algorithm table drifted: paste `testbed list --markdown`"


def test_every_named_test_exists():
    """The maturity column names tests: each must be a test function of the suite."""
    source = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for name, cls in ALGORITHMS.items():
        for t in cls.tests:
            assert re.search(rf"def {re.escape(t.split('[')[0])}\(", source), f"{name}: no test {t}"


def test_readme_package_map_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(testbed/[\w./]+)` \|", text, re.M))
    pkg = ROOT / "testbed"
    actual = {f"testbed/{p.name}" for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    actual |= {f"testbed/{p.name}" for p in pkg.glob("*.py") if p.name not in ("__init__.py", "cli.py", "errors.py",
                                                                              "io.py", "datasets.py")}
    assert actual <= listed, f"README package map lacks {sorted(actual - listed)}"
    assert all((ROOT / p).exists() for p in listed), f"README names {sorted(p for p in listed if not (ROOT / p).exists())}"


def test_theory_citations_point_at_sections_that_exist():
    """The project ships its own statement of the theorems it tests; every citation names one of its sections."""
    theory = (ROOT / "testbed" / "THEORY.md").read_text()
    sections = set(re.findall(r"^## ([A-Z])\.", theory, re.M))
    assert sections >= set("ABCDE")
    files = [ROOT / "README.md", *(ROOT / "testbed").rglob("*.py")]
    cited = {m for f in files for m in re.findall(r"testbed/THEORY\.md §([A-Z])", f.read_text())}
    assert cited and cited <= sections, f"citations of missing sections: {sorted(cited - sections)}"
    assert not any(re.search(r"(?<!testbed/)THEORY\.md", f.read_text()) for f in files if f.suffix == ".py")


def test_tox_test_env_installs_the_readmes_test_extras():
    """`tox` runs the suite with the extras the README's test command installs: with fewer, the diffusion and
    tensorboard tests skip under tox (importorskip) and tox passes a suite it did not run."""
    import configparser

    m = re.search(r'pip install -e "\.\[([\w,]+)\]" && python -m pytest', (ROOT / "README.md").read_text())
    assert m, "README.md lost its test command"
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    extras = {e.strip() for e in re.split(r"[,\n]", tox["testenv"]["extras"]) if e.strip()}
    assert extras == set(m.group(1).split(",")), f"tox [testenv] extras {sorted(extras)} != README's {m.group(1)}"
