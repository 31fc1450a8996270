"""Stage 1's sampler: joint distributions, eligibility rules, skeleton invariants and `personaloom sample`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from personaloom.catalogue import Catalogue, load_catalogue
from personaloom.errors import UserError
from personaloom.paths import SEEDS_DIR
from personaloom.pipeline import STAGES
from personaloom.schemas.config import BuildConfig
from personaloom.schemas.records import SeedRow
from personaloom.stages.base import StageContext
from personaloom.stages.seed import (
    SKELETON_INVARIANTS,
    life_stage_for,
    person_faith,
    row_seed,
    sample_skeleton,
    sample_skeletons,
    skeleton_violations,
)
from personaloom.store import read_records
from personaloom.testing.cli import assert_one_line_error, run


@cache
def catalogue() -> Catalogue:
    return load_catalogue()


@cache
def thousand() -> tuple[SeedRow, ...]:
    return tuple(sample_skeletons(catalogue(), range(1000), 11, n_sessions=8, n_changes=2))


# what a sound base row holds unless a test says otherwise: interests and a hint for any age, no changes
PLAIN = {"values_interests": ["honesty", "gardening", "chess"], "hint": "trying to reduce screen time"}


def a_row(where: str = "de_DE", **fields: object) -> SeedRow:
    """A sound skeleton (an employed adult of the locale, 30-44, a local) with `fields` changed; a changed
    gender picks a person of that gender, so the name stays theirs."""
    gender = fields.get("gender")
    row = next(
        r
        for r in locale_rows(where)
        if r.employment == "employed"
        and 30 <= r.age <= 44
        and (gender is None or r.gender == gender)
        and r.nationality == LOCALES[where]
        and person_faith(None, catalogue_roles()[r.occupation]) is None
    )
    row = row.model_copy(update={**PLAIN, "planned_changes": []})
    assert skeleton_violations(row, catalogue()) == []
    return row.model_copy(update=fields)


@cache
def locale_rows(locale: str) -> tuple[SeedRow, ...]:
    return tuple(sample_skeletons(catalogue(), range(400), 11, n_sessions=8, n_changes=2, locales=[locale]))


@cache
def catalogue_roles() -> dict[str, dict]:
    return {o["occupation"]: o for o in catalogue().occupations}


LOCALES = {"de_DE": "German", "pl_PL": "Polish", "en_IN": "Indian", "sv_SE": "Swedish", "en_GB": "British"}
LOCALES |= {"en_US": "American", "es_ES": "Spanish", "ja_JP": "Japanese", "ar_EG": "Egyptian"}


def broken(row: SeedRow) -> set[str]:
    names = {name for name, _ in skeleton_violations(row, catalogue())}
    assert names <= SKELETON_INVARIANTS.keys()
    return names


# ---------------------------------------------------------------- a sample obeys every rule


def test_a_sample_of_1000_breaks_no_skeleton_invariant() -> None:
    cat = catalogue()
    bad = {r.persona_id: skeleton_violations(r, cat) for r in thousand()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_shares_are_joint_not_independent() -> None:
    rows = thousand()
    young = [r for r in rows if r.age <= 21]
    old = [r for r in rows if r.age >= 70]
    assert sum(r.employment == "student" for r in young) / len(young) > 0.35
    assert sum(r.employment == "retired" for r in old) / len(old) > 0.55
    assert not any(r.employment == "retired" and r.age < 45 for r in rows)
    assert not any(r.employment == "student" and r.age >= 65 for r in rows)
    assert {r.employment for r in rows} == {
        "employed",
        "self_employed",
        "student",
        "apprentice",
        "retired",
        "homemaker",
        "unemployed",
    }
    # languages: one for most people, a second for the share that speaks it, never every language
    counts = Counter(len(r.languages) for r in rows)
    assert counts[1] > 0.5 * len(rows) and 1.1 < sum(len(r.languages) for r in rows) / len(rows) < 2.0
    us = [r for r in rows if r.locale == "en_US"]
    assert 0.05 < sum("Spanish" in r.languages for r in us) / len(us) < 0.35
    assert all(r.languages[0] == "English" for r in rows if r.locale == "en_GB")


def test_occupation_follows_status_age_and_locale() -> None:
    cat = catalogue()
    roles = {o["occupation"]: o for o in cat.occupations}
    rows = sample_skeletons(cat, range(3000), 4, n_sessions=4, n_changes=0, locales=["en_IN", "en_US"])
    for r in rows:
        role = roles[r.occupation]
        assert r.employment in role["statuses"] and role["min_age"] <= r.age <= role["max_age"]
        assert r.sector == role["sector"] and r.domain_vocabulary == role["domain_vocabulary"]
        if r.employment == "retired":
            assert r.occupation.startswith("retired ") and role["base"] in roles  # the former job
        if r.employment == "apprentice":
            assert r.occupation.startswith("apprentice ") and roles[role["base"]]["apprenticeship"]

    def farm_share(locale: str) -> float:
        workers = [r for r in rows if r.locale == locale and r.employment in ("employed", "self_employed")]
        return sum(r.sector == "agriculture" for r in workers) / len(workers)

    assert farm_share("en_IN") > 0.3 > 0.05 > farm_share("en_US")  # the locale's share of farm work


def test_life_stage_rule() -> None:
    assert life_stage_for(19, "student") == "student"
    assert life_stage_for(35, "student") == "family"
    assert life_stage_for(20, "employed") == "young_adult"
    assert life_stage_for(50, "homemaker") == "midlife"
    assert life_stage_for(60, "employed") == "pre_retirement"
    assert life_stage_for(80, "self_employed") == "pre_retirement"  # still working
    assert life_stage_for(70, "homemaker") == "retired"
    assert life_stage_for(58, "retired") == "retired"


def test_each_row_regenerates_alone_also_with_locales() -> None:
    cat = catalogue()
    rows = sample_skeletons(cat, range(40), 9, n_sessions=6, n_changes=2, locales=["nl_NL", "es_ES"])
    assert {r.locale for r in rows} == {"nl_NL", "es_ES"}
    again = sample_skeleton(cat, 33, row_seed(9, 33), n_sessions=6, n_changes=2, locales=["es_ES", "nl_NL"])
    assert again == rows[33]  # the order of the locales given does not matter


def test_unknown_locale_is_one_line() -> None:
    with pytest.raises(UserError, match="unknown locale.*xx_XX.*choose from"):
        sample_skeletons(catalogue(), range(3), 0, n_sessions=2, n_changes=0, locales=["de_DE", "xx_XX"])
    with pytest.raises(ValidationError):
        BuildConfig(locales=[])


def test_the_seed_stage_samples_only_the_configured_locales() -> None:
    stage = next(s for s in STAGES if s.name == "seed")
    cfg = BuildConfig(locales=["ja_JP"], expand_hints=False, scenes_per_persona=3, seed=2)
    out = asyncio.run(stage.run({}, StageContext(cfg, None, catalogue(), range(25))))  # type: ignore[arg-type]
    assert {r.locale for r in out.records} == {"ja_JP"}
    assert out.records == sample_skeletons(
        catalogue(), range(25), 2, n_sessions=3, n_changes=2, locales=["ja_JP"]
    )


# ---------------------------------------------------------------- each rule flags a row that breaks it


def test_rule_locale_known() -> None:
    assert "locale_known" in broken(a_row(country="France"))
    assert "locale_known" in broken(a_row(locale="xx_XX"))


def test_rule_occupation_known() -> None:
    assert "occupation_known" in broken(a_row(occupation="astronaut"))
    assert "occupation_known" in broken(a_row(occupation="software engineer", sector="healthcare"))
    assert "occupation_known" in broken(a_row(occupation="nursing student", sector="healthcare"))  # employed


def test_rule_occupation_age() -> None:
    row = a_row(occupation="high school student", sector="education", employment="student", age=40)
    assert "occupation_age" in broken(row.model_copy(update={"life_stage": "midlife"}))


@pytest.mark.parametrize(
    "occupation,sector,age",
    [
        ("surgeon", "healthcare", 27),
        ("lawyer", "law", 21),
        ("judge", "law", 26),
        ("airline pilot", "logistics", 20),
    ],
)
def test_rule_no_licensed_profession_before_it_can_qualify(occupation: str, sector: str, age: int) -> None:
    stage = life_stage_for(age, "employed")
    row = a_row(occupation=occupation, sector=sector, age=age, life_stage=stage)
    assert "qualification_age" in broken(row)


def test_qualification_ages_are_in_the_table() -> None:
    roles = {o["occupation"]: o for o in catalogue().occupations}
    for name, earliest in {"surgeon": 31, "general practitioner": 29, "judge": 27, "architect": 25}.items():
        assert roles[name]["min_age"] >= earliest and roles[name]["licence"]
    assert roles["retired judge"]["training_years"] == roles["judge"]["training_years"]


def test_rule_employment_age() -> None:
    young_retiree = a_row(
        occupation="retired software engineer",
        sector="tech",
        employment="retired",
        age=30,
        life_stage="retired",
    )
    assert "employment_age" in broken(young_retiree)
    old_student = a_row(
        occupation="adult education student", sector="education", employment="student", age=80
    ).model_copy(update={"life_stage": life_stage_for(80, "student")})
    assert broken(old_student) == {"employment_age"}  # the role fits 80; the table gives students 0 there


def test_rule_life_stage() -> None:
    assert broken(a_row(life_stage="retired")) == {"life_stage"}


def test_rule_hint_eligible() -> None:
    assert broken(a_row(gender="male", hint="pregnant with a first child")) == {"hint_eligible"}
    assert broken(a_row(hint="living on a fixed pension")) == {"hint_eligible"}  # employed, not retired
    assert broken(a_row(hint="studying for the bar exam")) >= {"hint_eligible"}  # law only
    assert broken(a_row(hint="just bought a first smartphone at 70")) == {"hint_eligible"}
    assert broken(a_row(hint="a hint no table holds")) == {"hint_eligible"}


def test_rule_languages_locale() -> None:
    assert broken(a_row(languages=["English", "German"])) == {"languages_locale"}  # main not first
    assert broken(a_row(languages=["German", "Klingon"])) == {"languages_locale"}
    assert broken(a_row(languages=["German", "German"])) == {"languages_locale"}
    # no language at all: nor is the interaction language one of them
    assert broken(a_row(languages=[])) == {"languages_locale", "interaction_language"}
    assert broken(a_row(languages=["German", "English", "Russian"])) == set()


# ---------------------------------------------------------------- the tables are checked when loaded


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    folder = tmp_path / "seeds"
    shutil.copytree(SEEDS_DIR, folder)
    return folder


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    "file,old,new,needles",
    [
        (
            "employment_status.csv",
            "en_US,female,18,21,0.319",
            "en_US,female,18,21,0.519",
            ["sum to", "employed"],
        ),
        ("employment_status.csv", "en_US,male,22,24,", "en_US,male,23,24,", ["gaps", "min_age"]),
        ("languages.csv", "ja_JP,Japanese,yes,1", "ja_JP,Japanese,no,1", ["column main", "ja_JP"]),
        ("languages.csv", "en_US,Spanish,no,0.03", "en_US,Spanish,no,often", ["column share"]),
        ("occupations.csv", "surgeon,healthcare,31,", "surgeon,healthcare,24,", ["min_age", "qualification"]),
        (
            "occupations.csv",
            ",apprenticeship,faith\n",
            ",apprenticeship,faith\nx,tech,20,60,a;b,employed,1,-,0,maybe,-\n",
            ["apprenticeship"],
        ),
        (
            "seed_hints.csv",
            "freelancing for the first time,career,20,65,*,self_employed",
            "freelancing for the first time,career,20,65,*,freelance",
            ["column employment", "freelance"],
        ),
        (
            "seed_hints.csv",
            "pregnant with a first child,health,18,45,female;nonbinary",
            "pregnant with a first child,health,18,45,woman",
            ["column gender"],
        ),
        (
            "locales.csv",
            "weight,agriculture_share",
            "weight,farm_share",
            ["locales.csv", "agriculture_share"],
        ),
    ],
)
def test_bad_seed_tables_fail_in_one_line(
    seeds: Path, file: str, old: str, new: str, needles: list[str]
) -> None:
    edit(seeds / file, old, new)
    with pytest.raises(UserError) as e:
        load_catalogue(seeds)
    message = str(e.value)
    assert "\n" not in message and file in message
    for n in needles:
        assert n in message, message


def test_a_status_without_any_role_is_refused(seeds: Path) -> None:
    occ = pl.read_csv(seeds / "occupations.csv", infer_schema=False)
    occ.filter(pl.col("status") != "homemaker").write_csv(seeds / "occupations.csv")
    with pytest.raises(
        UserError, match="employment_status.csv: column homemaker .* no occupation with status"
    ):
        load_catalogue(seeds)


# ---------------------------------------------------------------- the command


def test_sample_command_writes_the_builds_skeletons(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "s.parquet"
    res = run(
        "sample",
        "--personas",
        "300",
        "--seed",
        "3",
        "--out",
        str(out),
        "--locales",
        "en_US,de_DE",
        "--sessions",
        "5",
    )
    assert res.returncode == 0, res.stderr
    rows = read_records(out, SeedRow)
    want = sample_skeletons(catalogue(), range(300), 3, n_sessions=5, n_changes=2, locales=["en_US", "de_DE"])
    assert rows == want
    for needle in (
        "300 skeletons",
        "students among",
        "retired among",
        "languages per person",
        "locales: ",
        "rows breaking a skeleton invariant: 0",
    ):
        assert needle in res.stdout, res.stdout


def test_sample_config_file_gives_the_same_rows(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('personas = 40\nseed = 5\nscenes_per_persona = 3\nlocales = ["sv_SE"]\n')
    res = run("sample", "--config", str(config), "--out", str(tmp_path / "a.parquet"))
    assert res.returncode == 0, res.stderr
    assert read_records(tmp_path / "a.parquet", SeedRow) == sample_skeletons(
        catalogue(), range(40), 5, n_sessions=3, n_changes=2, locales=["sv_SE"]
    )


def test_sample_bad_flags_are_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "s.parquet")
    assert_one_line_error(
        run("sample", "--locales", "en_US,xx_XX", "--out", out), "--locales", "xx_XX", "choose from"
    )
    assert_one_line_error(run("sample", "--locales", ",", "--out", out), "--locales")
    assert_one_line_error(run("sample", "--personas", "0", "--out", out), "--personas")
    assert_one_line_error(run("sample", "--out", str(tmp_path)), "--out", "is a folder")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(
        run("sample", "--out", str(blocker / "sub" / "s.parquet")), "--out", "cannot create"
    )
    assert not (tmp_path / "s.parquet").exists()


def test_build_rejects_unknown_locales_before_any_work(tmp_path: Path) -> None:
    res = run(
        "build",
        "--locales",
        "en_US,zz_ZZ",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(res, "--locales", "zz_ZZ")
    assert not (tmp_path / "o").exists()


def test_sample_never_imports_prefect(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom personaloom.cli import main\n"
        f"sys.argv = ['personaloom', 'sample', '--personas', '5', '--out', {str(tmp_path / 'p.parquet')!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('PREFECT', any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules))\n"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "PREFECT False" in probe.stdout, probe.stdout + probe.stderr
