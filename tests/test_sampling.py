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

from personaloom.dataset.store import read_records
from personaloom.errors import UserError
from personaloom.paths import SEEDS_DIR
from personaloom.pipeline import STAGES
from personaloom.schemas.config import BuildConfig
from personaloom.schemas.records import PlannedChange, SeedRow
from personaloom.stages.base import StageContext
from personaloom.stages.catalogue import Catalogue, load_catalogue
from personaloom.stages.drift import plan_violations
from personaloom.stages.seed import (
    SKELETON_INVARIANTS,
    life_stage_for,
    person_faith,
    row_seed,
    sample_skeleton,
    sample_skeletons,
    skeleton_violations,
)
from personaloom.testing.cli import assert_one_line_error, run

# the build's defaults for fine-grained preferences (BuildConfig.fine_preferences, fine_changes_per_persona)
FINE = {
    "n_fine": BuildConfig.model_fields["fine_preferences"].default,
    "n_fine_changes": BuildConfig.model_fields["fine_changes_per_persona"].default,
}


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
        catalogue(), range(25), 2, n_sessions=3, n_changes=2, locales=["ja_JP"], **FINE
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


# ---------------------------------------------------------------- joint rules (issue 30), each fires


def named(row: SeedRow, given: str, family: str) -> SeedRow:
    """The row with another name of a Latin-script, given-first locale."""
    return row.model_copy(update={"name": f"{given} {family}", "name_romanized": f"{given} {family}"})


def plan(*events: str, kind: str = "tone_warm") -> list[PlannedChange]:
    """Planned changes at sessions 1, 2, ... motivated by `events` (a kind no work-status event needs)."""
    return [
        PlannedChange(
            kind=kind,
            field="Communication.emotional_tone",
            op="switch",
            at_session=i + 1,
            direction="sounds warmer",
            event=e,
            target="warm",
        )
        for i, e in enumerate(events)
    ]


@cache
def immigrants(locale: str) -> tuple[SeedRow, ...]:
    rows = sample_skeletons(catalogue(), range(4000), 2, n_sessions=6, n_changes=2, locales=[locale])
    return tuple(r for r in rows if r.nationality != LOCALES[locale])


def test_rule_surname_gender() -> None:
    cat = catalogue()
    masculine = next(m for (loc, m) in cat.feminine if loc == "pl_PL")  # Kowalski
    feminine = cat.feminine[("pl_PL", masculine)][0]  # Kowalska
    woman = a_row("pl_PL", gender="female")
    given = woman.name.split()[0]
    assert broken(named(woman, given, masculine)) == {"surname_gender"}
    assert broken(named(woman, given, feminine)) == set()
    man = a_row("pl_PL", gender="male")
    assert broken(named(man, man.name.split()[0], feminine)) == {"surname_gender"}
    assert broken(named(man, man.name.split()[0], masculine)) == set()
    other = a_row("pl_PL", gender="nonbinary")  # either form
    assert broken(named(other, other.name.split()[0], feminine)) == set()
    assert broken(named(other, other.name.split()[0], masculine)) == set()
    assert broken(named(woman, given, "Nowak")) == set()  # a surname with one form for everyone


def test_rule_name_origin() -> None:
    woman = a_row(gender="female")
    assert broken(named(woman, "Yuki", "Tanaka")) == {"name_origin"}  # Japanese names for a German
    assert broken(named(woman, "Lukas", "Müller")) == {"name_origin"}  # a man's given name
    assert broken(named(woman, "Anna", "Müller")) == set()
    japanese = a_row("ja_JP")
    assert broken(japanese.model_copy(update={"name": japanese.name_romanized})) == {"name_origin"}  # script


def test_rule_name_faith() -> None:
    woman = a_row("en_IN", gender="female")
    assert broken(named(woman, "Priya", "Khan")) == {"name_faith"}  # a Hindu and a Muslim name
    assert broken(named(woman, "Fatima", "Khan")) == set()
    assert broken(named(woman, "Priya", "Shah")) == set()  # Shah is a Hindu and a Muslim surname
    fasting = woman.model_copy(update={"hint": "fasting during Ramadan while working full time"})
    assert broken(named(fasting, "Priya", "Sharma")) == {"name_faith"}  # the faith's names where there are
    assert broken(named(fasting, "Fatima", "Qureshi")) == set()
    choir = woman.model_copy(update={"hint": "active in a church choir"})
    assert broken(named(choir, "Mary", "D'Souza")) == set()
    assert broken(named(choir, "Fatima", "D'Souza")) == {"name_faith"}
    us = a_row("en_US").model_copy(update={"hint": "fasting during Ramadan while working full time"})
    assert broken(us) == set()  # no American name marks a faith: any name


def test_rule_immigrant_background() -> None:
    assert broken(a_row(hint="recently immigrated and learning the local language")) == {
        "immigrant_background"
    }
    foreigner = a_row().model_copy(update={"nationality": "Turkish"})  # with a German name and language
    assert {"immigrant_background", "name_origin", "languages_locale"} <= broken(foreigner)
    movers = immigrants("de_DE")
    newcomer = next(r for r in movers if r.hint.startswith("recently immigrated"))
    settled = next(r for r in movers if r.hint == "preparing for a citizenship test")
    assert broken(newcomer) == set() and broken(settled) == set()
    assert "German" not in newcomer.languages and "German" in settled.languages
    speaks = newcomer.model_copy(update={"languages": [*newcomer.languages, "German"]})
    assert broken(speaks) == {"immigrant_background"}  # a newcomer still learning the language
    silent = settled.model_copy(update={"languages": [x for x in settled.languages if x != "German"]})
    assert "immigrant_background" in broken(silent)
    assert "immigrant_background" in broken(
        newcomer.model_copy(update={"nationality": "Kenyan"})
    )  # no corridor


def test_rule_hint_locale() -> None:
    ramadan = "fasting during Ramadan while working full time"
    assert broken(a_row("pl_PL", hint=ramadan)) == {"hint_locale"}  # under 0.1% Muslims (religions.csv)
    assert broken(a_row("pl_PL", hint="active in a church choir")) == set()
    assert broken(a_row(hint="making merit at the temple on every holy day")) == {"hint_locale"}  # th_TH only
    assert "hint_locale" in broken(a_row("ar_EG", hint="preparing for a bar or bat mitzvah in the family"))
    assert "hint_locale" in broken(a_row("ja_JP", hint="preparing for a citizenship test"))  # no test there
    assert broken(a_row("en_US", hint="preparing for a bar or bat mitzvah in the family")) == set()


def test_rule_occupation_locale_and_faith_consistent() -> None:
    imam = {"occupation": "imam", "sector": "religion"}
    assert broken(a_row("pl_PL", **imam)) == {"occupation_locale"}
    assert broken(a_row("en_US", **imam)) == set()
    assert broken(a_row("en_US", **imam, hint="active in a church choir")) == {"faith_consistent"}
    assert broken(a_row("en_US", **imam, hint="planning a pilgrimage")) == set()  # any faith's
    roles = catalogue_roles()
    assert roles["imam"]["faith"] == "muslim" and roles["retired imam"]["faith"] == "muslim"


def test_rule_qualification_age_by_country() -> None:
    lawyer = {
        "occupation": "lawyer",
        "sector": "law",
        "age": 24,
        "life_stage": life_stage_for(24, "employed"),
    }
    assert broken(a_row("en_GB", **lawyer)) == set()  # LLB + two years of qualifying work: 23
    assert broken(a_row("sv_SE", **lawyer)) == {"qualification_age"}  # advokat after 3 years' practice: 26
    assert broken(a_row("sv_SE", **lawyer | {"age": 26, "life_stage": "family"})) == set()
    earliest = {loc: 18 + y for (job, loc), y in catalogue().qualifications.items() if job == "lawyer"}
    assert earliest["fr_FR"] >= 25 and earliest["sv_SE"] >= 26 and earliest["en_US"] == 25


def test_rule_interest_age() -> None:
    grandchildren = ["honesty", "chess", "spending time with grandchildren"]
    assert broken(a_row(values_interests=grandchildren)) == {"interest_age"}  # 30-44
    takes_up = PlannedChange(
        kind="interest_new",
        field="Personality.Values_and_Interests",
        op="add",
        at_session=1,
        direction="takes up a new interest",
        event="joined a local sports club",
        target="spending time with grandchildren",
    )
    assert broken(a_row(planned_changes=[takes_up])) == {"interest_age"}
    assert broken(a_row(planned_changes=[takes_up.model_copy(update={"target": "bouldering"})])) == set()


def test_rule_interest_locale() -> None:
    kabaddi = ["honesty", "chess", "kabaddi"]
    assert broken(a_row(values_interests=kabaddi)) == {"interest_locale"}
    assert broken(a_row("en_IN", values_interests=kabaddi)) == set()
    assert broken(a_row("ja_JP", values_interests=["honesty", "chess", "learning Japanese"])) == {
        "interest_locale"
    }
    speaker = a_row(
        "en_US", languages=["English", "Spanish"], values_interests=["chess", "learning Spanish", "jazz"]
    )
    assert broken(speaker) == {"interest_locale"}  # they speak it
    assert broken(a_row(values_interests=["chess", "jazz", "underwater basket weaving"])) == {
        "interest_locale"
    }


def test_rule_facts_consistent() -> None:
    expecting = a_row(gender="female", age=45, life_stage="midlife", hint="pregnant with a first child")
    assert broken(expecting) == set()
    grandchildren = ["chess", "jazz", "spending time with grandchildren"]
    assert broken(expecting.model_copy(update={"values_interests": grandchildren})) == {"facts_consistent"}


def test_rule_event_history() -> None:
    assert broken(a_row(planned_changes=plan("got married"))) == set()
    assert broken(a_row(planned_changes=plan("got married", "went through a divorce"))) == {"event_history"}
    assert broken(a_row(planned_changes=plan("went through a divorce", "got married"))) == {"event_history"}
    assert broken(a_row(planned_changes=plan("had a health scare", "had a health scare"))) == {
        "event_history"
    }
    twins = a_row(hint="new parent of twins", planned_changes=plan("their first child was born"))
    assert broken(twins) == {"event_history"}  # no first child for a parent
    assert broken(a_row(hint="newly married", planned_changes=plan("got married"))) == {"event_history"}
    assert (
        broken(a_row(hint="going through a divorce", planned_changes=plan("went through a divorce"))) == set()
    )
    first = a_row(
        gender="female",
        hint="pregnant with a first child",
        planned_changes=plan("their first child was born"),
    )
    assert broken(first) == set()
    assert broken(a_row(planned_changes=plan("their first child was born", "became a grandparent"))) >= {
        "event_history"
    }


def test_rule_work_change_learnable() -> None:
    worried = plan("lost their job", kind="tone_anxious")
    assert broken(a_row(planned_changes=worried)) == {"work_change_learnable"}  # the routine must follow
    job_search = PlannedChange(
        kind="usage_job_search",
        field="Pattern.Usage_Pattern",
        op="replace",
        at_session=1,
        direction="mostly job hunting: applications, CVs and interview practice",
        event="lost their job",
    )
    assert broken(a_row(planned_changes=[job_search])) == set()
    unmotivated = job_search.model_copy(update={"event": "had a health scare"})
    assert broken(a_row(planned_changes=[unmotivated])) == {"work_change_learnable"}
    # a new full-time job for someone employed already changes no status: any kind may follow it
    assert broken(a_row(planned_changes=plan("started a new full-time job"))) == set()


def test_20000_skeletons_break_no_rule_and_follow_the_joint_shares() -> None:
    cat = catalogue()
    rows = sample_skeletons(cat, range(20_000), 0, n_sessions=20, n_changes=2)  # as `personaloom sample`
    counts = Counter(
        name
        for r in rows
        for name in {n for n, _ in skeleton_violations(r, cat)} | {n for n, _ in plan_violations(cat, r)}
    )
    assert counts == Counter()
    per_locale = Counter(r.locale for r in rows)

    def rate(hint: str, locale: str) -> float:
        return sum(r.hint == hint and r.locale == locale for r in rows) / per_locale[locale]

    ramadan = "fasting during Ramadan while working full time"
    assert rate(ramadan, "id_ID") > 5 * rate(ramadan, "zh_CN")
    assert rate("active in a church choir", "pl_PL") > 5 * rate("active in a church choir", "th_TH")
    movers = [r for r in rows if r.nationality != cat.locales[0]["nationality"] and r.locale == "en_US"]
    assert movers and all(r.hint in {h["hint"] for h in cat.hint_rules if h["background"]} for r in movers)
    old = [r for r in rows if r.age >= 75]
    young_only = {"esports", "K-pop", "bouldering", "CrossFit", "coding bootcamps"}
    assert not any(young_only & set(r.values_interests) for r in old)


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
    want = sample_skeletons(
        catalogue(), range(300), 3, n_sessions=5, n_changes=2, locales=["en_US", "de_DE"], **FINE
    )
    assert rows == want
    for needle in (
        "300 skeletons",
        "students among",
        "retired among",
        "languages per person",
        "locales: ",
        "rows breaking a skeleton invariant: 0",
        "joint checks, rows breaking each: surname_gender 0",
        "immigrants (another locale's nationality)",
    ):
        assert needle in res.stdout, res.stdout


def test_sample_config_file_gives_the_same_rows(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('personas = 40\nseed = 5\nscenes_per_persona = 3\nlocales = ["sv_SE"]\n')
    res = run("sample", "--config", str(config), "--out", str(tmp_path / "a.parquet"))
    assert res.returncode == 0, res.stderr
    assert read_records(tmp_path / "a.parquet", SeedRow) == sample_skeletons(
        catalogue(), range(40), 5, n_sessions=3, n_changes=2, locales=["sv_SE"], **FINE
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


def _sample_in_threads(cat: Catalogue, n: int) -> list[SeedRow]:
    import threading

    start = threading.Barrier(n)
    got: dict[int, list[SeedRow]] = {}
    errors: list[BaseException] = []

    def shard(i: int) -> None:
        start.wait()
        try:
            got[i] = sample_skeletons(cat, range(i * 100, i * 100 + 100), 9, n_sessions=10, n_changes=3)
        except BaseException as e:  # the test reports it
            errors.append(e)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return [r for i in range(n) for r in got[i]]


def test_shards_sampling_in_threads_share_the_motive_cache() -> None:
    """Shards sample their skeletons in threads: a cache entry is readable the moment it is found."""
    from personaloom.stages import drift

    cat = catalogue()
    want = sample_skeletons(cat, range(400), 9, n_sessions=10, n_changes=3)
    for _ in range(3):
        drift._MOTIVES.clear()
        drift._MOTIVE_KINDS.clear()
        assert _sample_in_threads(cat, 4) == want
