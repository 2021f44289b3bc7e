"""The record's field table (runner/fields.py) is the README's, and real records have no field it lacks."""

from __future__ import annotations

import pytest

from runner.fields import README, markdown_table, readme_with_table, undocumented


def test_readme_shows_the_field_table_of_runner_fields():
    text = README.read_text(encoding="utf-8")
    assert markdown_table() in text
    assert readme_with_table(text) == text, "README.md's record table drifted: python -m runner.fields --write"


def test_a_field_no_row_names_is_reported():
    assert undocumented({"run_id": "x", "ttft_ms_p99": 1.0, "env_torch": "2", "made_up_ms": 3}) == ["made_up_ms"]
    assert undocumented({"batch_latency_ms_p42": 1.0}) == ["batch_latency_ms_p42"]  # {a,b}: only those suffixes


@pytest.mark.slow
def test_every_field_of_real_records_is_in_the_table(raw):
    """The session's real sweep (HF and llama.cpp, batch 1 and 2): each key of each record has its row."""
    assert raw and all(record["status"] == "ok" for record in raw)
    assert {key for record in raw for key in undocumented(record)} == set()
