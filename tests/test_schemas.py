from datetime import UTC, date, datetime

import pyarrow as pa
import pytest
from pydantic import BaseModel

from personaloom.dataset.store import read_records, write_records
from personaloom.schemas.arrow import arrow_schema, to_table
from personaloom.schemas.records import ApiSpec, DatasetRow, PersonaRecord, Query, Rejection, Scene, SeedRow


def test_arrow_types_follow_the_model() -> None:
    s = arrow_schema(Scene)
    assert s.field("session_index").type == pa.int64()
    assert s.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert s.field("revisits").nullable and not s.field("title").nullable
    apis = s.field("apis").type
    assert pa.types.is_list(apis) and pa.types.is_struct(apis.value_type)
    assert [f.name for f in apis.value_type] == list(ApiSpec.model_fields)
    assert arrow_schema(SeedRow).field("start_date").type == pa.date32()
    assert list(arrow_schema(DatasetRow).names) == list(DatasetRow.model_fields)


@pytest.mark.parametrize("model", [SeedRow, PersonaRecord, Scene, Query, Rejection, DatasetRow])
def test_every_table_has_a_zero_row_form(model: type[BaseModel]) -> None:
    table = to_table(model, [])
    assert table.num_rows == 0 and table.schema == arrow_schema(model)


def test_unsupported_annotation_is_refused() -> None:
    class Bad(BaseModel):
        x: set[int]  # a dict is a Parquet map; a set has no Parquet type

    with pytest.raises(TypeError, match="no Parquet type"):
        arrow_schema(Bad)


def test_records_round_trip_through_parquet(tmp_path) -> None:
    q = Query(
        query_id="q1",
        scene_id="s1",
        persona_id="p1",
        session_index=2,
        personalized_query="hello there",
        neutralized_query="hello",
        revealed_fields=["Preference.Preferred_Formats"],
    )
    r = Rejection(stage="filter", row_id="q2", reason="too_short", score=1.0)
    write_records(tmp_path / "q" / "part-00000.parquet", Query, [q])
    write_records(tmp_path / "r" / "part-00000.parquet", Rejection, [r])
    assert read_records(tmp_path / "q", Query) == [q]
    assert read_records(tmp_path / "r", Rejection) == [r]
    assert read_records(tmp_path / "missing", Query) == []


def test_timestamps_and_dates_survive(tmp_path) -> None:
    from personaloom.stages.catalogue import load_catalogue
    from personaloom.stages.samples import sample_records

    p = sample_records(load_catalogue()).persona  # a fully populated persona
    write_records(tmp_path / "p" / "part-00000.parquet", PersonaRecord, [p])
    (back,) = read_records(tmp_path / "p", PersonaRecord)
    assert back == p and isinstance(back.persona.Changes[0].date, date)
    assert datetime(2025, 1, 1, tzinfo=UTC).tzinfo is not None
