"""Multilingual personas end to end: interaction language and native names, prompts in the persona's
language, stage 5 per script (bench/multilingual_filter_bench.py, smaller), memory in any script."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from personaloom.agent.memory import EndpointEmbedder, HashingEmbedder, tokens
from personaloom.dataset.store import read_records
from personaloom.errors import UserError
from personaloom.llm.client import LLM
from personaloom.pipeline.flow import build_dataset
from personaloom.schemas.config import BuildConfig, LLMConfig
from personaloom.schemas.filtering import FilterConfig
from personaloom.schemas.records import PersonaRecord, SeedRow
from personaloom.stages.catalogue import load_catalogue
from personaloom.stages.filter import filter_texts
from personaloom.stages.seed import sample_skeleton, sample_skeletons, skeleton_violations
from personaloom.testing.cli import assert_one_line_error, run
from personaloom.testing.fake_openai import FakeOpenAI
from personaloom.text.languages import language_breakdown, language_name

ROOT = Path(__file__).resolve().parent.parent
HAN_OR_KANA = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")
THAI = re.compile(r"[\u0e00-\u0e7f]")
LOCALE_LANGUAGE = {"zh_CN": "zh", "ja_JP": "ja", "th_TH": "th"}


def _bench():  # bench/ is not a package: load the benchmark module by path
    spec = importlib.util.spec_from_file_location(
        "multilingual_filter_bench", ROOT / "bench" / "multilingual_filter_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- stage 1: language and names


def test_interaction_language_is_one_of_the_persons_written_languages() -> None:
    cat = load_catalogue()
    rows = sample_skeletons(cat, range(3000), 0, n_sessions=4, n_changes=2)
    codes = {lang: code for lang, (code, ok) in cat.language_codes.items() if ok and code}
    for r in rows:
        assert r.interaction_language in {codes[lang] for lang in r.languages if lang in codes}, r
        assert skeleton_violations(r, cat) == []
    by_locale = {loc: [r for r in rows if r.locale == loc] for loc in ("ja_JP", "de_DE", "en_IN")}
    # most people write in their main language; some in English (locales.csv english_share)
    ja = [r.interaction_language for r in by_locale["ja_JP"]]
    assert ja.count("ja") / len(ja) > 0.95 and set(ja) <= {"ja", "en"}
    de = [r.interaction_language for r in by_locale["de_DE"]]
    assert 0.02 < de.count("en") / len(de) < 0.2 and de.count("de") / len(de) > 0.8
    assert {"hi", "en"} <= {r.interaction_language for r in by_locale["en_IN"]}


def test_names_in_the_locales_script_with_a_romanized_form() -> None:
    cat = load_catalogue()
    rows = sample_skeletons(cat, range(60), 5, n_sessions=3, n_changes=0, locales=["zh_CN", "ja_JP", "th_TH"])
    for r in rows:
        script = THAI if r.locale == "th_TH" else HAN_OR_KANA
        assert script.search(r.name) and r.name_romanized and r.name_romanized.isascii(), r
        if r.locale != "th_TH":
            assert " " not in r.name  # family name first, no space
        else:
            assert len(r.name.split()) == 2 and len(r.name_romanized.split()) == 2
    latin = sample_skeletons(cat, range(20), 5, n_sessions=3, n_changes=0, locales=["de_DE"])
    assert all(r.name == r.name_romanized for r in latin)


def test_languages_restrict_the_sample_and_a_row_regenerates_from_its_seed() -> None:
    cat = load_catalogue()
    rows = sample_skeletons(cat, range(80), 1, n_sessions=3, n_changes=1, languages=["th", "ar"])
    assert {r.interaction_language for r in rows} == {"th", "ar"}
    assert {r.locale for r in rows} <= {"th_TH", "ar_EG", "fr_FR", "tr_TR"}
    for r in rows[:10]:
        again = sample_skeleton(cat, r.index, r.seed, n_sessions=3, n_changes=1, languages=["th", "ar"])
        assert again == r
    english = sample_skeletons(
        cat, range(30), 1, n_sessions=3, n_changes=0, languages=["en"], locales=["ja_JP"]
    )
    assert all(r.interaction_language == "en" and "English" in r.languages for r in english)


def test_unknown_or_unreachable_languages_are_one_line_errors(tmp_path: Path) -> None:
    out = str(tmp_path / "s.parquet")
    assert_one_line_error(
        run("sample", "--languages", "zh,xx", "--out", out), "--languages", "xx", "choose from"
    )
    assert_one_line_error(
        run("sample", "--languages", "th", "--locales", "ja_JP", "--out", out),
        "--languages",
        "nobody in ja_JP",
    )
    res = run("sample", "--personas", "12", "--languages", "ja,th", "--out", out)
    assert res.returncode == 0, res.stderr
    assert set(pl.read_parquet(out)["interaction_language"]) <= {"ja", "th"}
    assert "interaction languages:" in res.stdout
    with pytest.raises(UserError, match="unknown language"):
        from personaloom.stages.catalogue import check_languages

        check_languages(load_catalogue(), ["qq"])


# ---------------------------------------------------------------- stage 5 per script


def test_filter_finds_planted_duplicates_in_every_script(tmp_path: Path) -> None:
    """The benchmark, smaller, through `personaloom filter --lang-column` as a user runs it."""
    bench = _bench()
    df = bench.generate(150, seed=3)
    df.write_parquet(tmp_path / "texts.parquet")
    res = run(
        "filter",
        str(tmp_path / "texts.parquet"),
        "--column",
        "text",
        "--id-column",
        "row_id",
        "--lang-column",
        "lang",
        "--out",
        str(tmp_path / "f"),
    )
    assert res.returncode == 0, res.stderr
    rejected = pl.read_parquet(tmp_path / "f" / "rejections.parquet")
    results = bench.evaluate(df, rejected)
    assert set(results) == {"zh", "ja", "th", "ar", "ru", "hi"}
    for code, r in results.items():
        assert r["recall"] >= 0.99, (code, r)
        assert r["wrong_dup_drops"] == 0, (code, r)
        assert r["rule_drops_of_unique_rows"] <= 1, (code, r)  # almost no valid row dropped by a rule


def test_rules_read_scripts_without_spaces() -> None:
    texts = [
        "明天下午三点帮我订一张去上海的高铁票",  # one whitespace "word", 17 characters
        "東京駅から京都まで新幹線で行きたいです",
        "ช่วยจองโต๊ะร้านอาหารคืนนี้ให้หน่อยครับ",
        "哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈",  # repetition
        "我想去北京和",  # cut off after "and"
        "今日は天気を",  # cut off after the object particle
        "好",
    ]
    out = filter_texts(pl.DataFrame({"text": texts}), "text", FilterConfig())
    reasons = dict(zip(out.rejected["text"], out.rejected["drop_reason"], strict=True))
    assert reasons == {
        texts[3]: "low_unique_ratio",
        texts[4]: "truncated",
        texts[5]: "truncated",
        texts[6]: "too_short",
    }


def test_wrong_language_names_the_detected_language() -> None:
    df = pl.DataFrame(
        {
            "text": [
                "Please book me a table for two at an Italian restaurant tonight.",
                "Bitte reserviere mir heute Abend einen Tisch für zwei Personen.",
                "请帮我预订今晚两个人的意大利餐厅。",
                "Habari za asubuhi rafiki yangu",  # Swahili the model is unsure of: kept
            ],
            "language": ["de", "de", "zh", "sw"],
        }
    )
    out = filter_texts(df, "text", FilterConfig(), lang_column="language")
    wrong = out.rejected.filter(pl.col("drop_reason") == "wrong_language")
    assert wrong["text"].to_list() == [df["text"][0]]
    assert wrong["lang"][0] == "en" and wrong["rule_score"][0] > 0.5
    assert out.counts["wrong_language"] == 1 and out.kept.height == 3


def test_refusals_and_near_duplicates_in_other_scripts() -> None:
    texts = [
        "Как языковая модель, я не могу бронировать билеты на поезд.",
        "作为一个人工智能，我无法为你预订机票。",
        "Подскажите, пожалуйста, как доехать от вокзала до центра Казани на автобусе вечером?",
        "Подскажите пожалуйста как доехать от вокзала до центра Казани на автобусе вечером",
        "请问从北京南站到首都机场坐地铁怎么走最快，大概需要多长时间？",
        "请问从北京南站到首都机场坐地铁怎么走最快？大概要多长时间？",
    ]
    out = filter_texts(pl.DataFrame({"text": texts}), "text", FilterConfig())
    reasons = dict(zip(out.rejected["text"], out.rejected["drop_reason"], strict=True))
    assert reasons[texts[0]] == reasons[texts[1]] == "refusal"
    assert (
        reasons[texts[3]] in ("exact_duplicate", "near_duplicate") and reasons[texts[5]] == "near_duplicate"
    )
    assert out.kept.height == 2


# ---------------------------------------------------------------- the agent's memory


def test_hashing_embedder_embeds_any_script() -> None:
    e = HashingEmbedder(128)
    assert tokens("今日は晴れ") == ["今日", "日は", "は晴", "晴れ"] and tokens("Привет, мир") == [
        "привет",
        "мир",
    ]
    zh = [e.embed(t) for t in ("我想订去上海的火车票", "帮我订一张去上海的火车票", "推荐几本科幻小说")]
    assert all(np.linalg.norm(v) > 0.99 for v in zh)
    assert zh[0] @ zh[1] > zh[0] @ zh[2] + 0.2
    ar = [e.embed(t) for t in ("أريد حجز تذكرة قطار", "احجز لي تذكرة قطار", "وصفة كعكة الشوكولاتة")]
    assert ar[0] @ ar[1] > ar[0] @ ar[2]


def test_endpoint_embedder_uses_the_embeddings_api(fake: FakeOpenAI, tmp_path: Path) -> None:
    async def go() -> tuple[int, np.ndarray, np.ndarray, int]:
        llm = LLM(LLMConfig(model="fake-model"), base_url=fake.base_url, api_key="sk-test", cache=None)
        try:
            emb = EndpointEmbedder(llm, "fake-embed")
            await emb.prepare()
            a = await emb.aembed("สวัสดีครับ")
            b = await emb.aembed("สวัสดีครับ")  # cached in the embedder: no second request
            return emb.dim, a, b, llm.usage["embedding"].calls
        finally:
            await llm.aclose()

    dim, a, b, calls = asyncio.run(go())
    assert dim == 64 and np.allclose(a, b) and abs(np.linalg.norm(a) - 1) < 1e-6 and calls == 2
    paths = [r["path"] for r in fake.requests]
    assert paths.count("/v1/embeddings") == 2


# ---------------------------------------------------------------- a mock build in three locales


@pytest.mark.usefixtures("prefect_harness")
def test_mock_build_follows_the_locale(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        llm = LLMConfig(model="fake-model", base_url=fake.base_url, concurrency=16)
        cfg = BuildConfig(
            dataset="ml",
            personas=6,
            scenes_per_persona=3,
            shard_size=3,
            seed=4,
            locales=["zh_CN", "ja_JP", "th_TH"],
            llm=llm,
        )
        version = asyncio.run(build_dataset(cfg, out=str(tmp_path)))
        chats = [r["body"] for r in fake.requests if r["path"].endswith("/chat/completions")]
    root = tmp_path / "ml" / version
    seeds = {s.persona_id: s for s in read_records(root / "seeds", SeedRow)}
    personas = read_records(root / "personas", PersonaRecord)
    assert {s.locale for s in seeds.values()} <= set(LOCALE_LANGUAGE) and len(personas) == 6
    prompts = ["\n".join(m["content"] for m in b["messages"]) for b in chats]
    for p in personas:
        seed, d = seeds[p.persona_id], p.persona.Demographics
        want = LOCALE_LANGUAGE[seed.locale]
        assert d.Interaction_Language == seed.interaction_language
        assert seed.interaction_language == want or (
            "English" in seed.languages and d.Interaction_Language == "en"
        )
        script = THAI if seed.locale == "th_TH" else HAN_OR_KANA
        assert d.Name == seed.name and script.search(d.Name) and seed.name_romanized.isascii()
        # the persona's own prompts (its name is in them) ask for its language, never another one
        mine = [t for t in prompts if d.Name in t]
        name = language_name(d.Interaction_Language)
        for text in mine:
            asked = set(re.findall(r"\b[Ww]rite\b[^\n]*?\bin ([A-Z][a-z]+)\b", text)) - {"English"}
            assert asked <= {name}, (d.Name, asked, text[-300:])
        # every generation call of stages 1-4 asks for it (expand, synthesize, list, enrich, simulate)
        for marker in (
            '"expanded_hint"',
            "Career_Information",
            '"scenes"',
            "expected_response",
            "personalized_query",
        ):
            calls = [t for t in mine if marker in t]
            assert calls and all(f"in {name}" in t for t in calls), (d.Name, marker)
    # the neutralizer keeps the language of the query it rewrites
    neutral = [t for t in prompts if '"neutralized_query"' in t and "Request:" in t]
    assert neutral and all(
        re.search(r"Write the neutral request in (Chinese|Japanese|Thai|English)", t) for t in neutral
    )
    # the fake writes in the language asked: the queries are in it, and stage 5 finds them so
    manifest = json.loads((root / "manifest.json").read_text())
    found = manifest["languages"]
    assert found and set(found) <= {"zh", "ja", "th", "wuu", "yue", "en"}
    assert sum(found.get(c, 0) for c in ("zh", "ja", "th")) >= 0.9 * sum(found.values())
    card = (root / "README.md").read_text()
    assert "## Languages" in card and "\n- " + next(iter(found)) in card.split("---")[1]
    table = language_breakdown(root)
    assert set(table["language"]) <= {"zh", "ja", "th", "en"} and table["seeds"].sum() == 6
    res = run("show", f"ml@{version}", "--out", str(tmp_path))
    assert res.returncode == 0 and "language ID of dataset rows" in res.stdout, res.stderr
