"""The artifacts' wording for the drill (a failed one names its reason and the counts that differ)."""

from rem.reports import drill_report, human_bytes, table


def test_a_failed_drill_says_why_and_shows_the_counts_per_schema():
    result = {"passed": False, "backup": "2026-12-01T030000Z", "db_path": "/var/lib/rem/db",
              "started_at": "2026-12-01T03:00:00+00:00", "seconds": 12.5,
              "reason": "entity counts per schema differ, restored vs live: {'notes': (9, 10)}",
              "counts": {"restored": {"notes": 9, "people": 4}, "live": {"notes": 10, "people": 4}}}
    text = drill_report(result)
    assert text.startswith("# Recovery drill: FAILED")
    assert "| reason | entity counts per schema differ" in text
    assert "| notes | 9 | 10 |" in text and "| people | 4 | 4 |" in text


def test_cells_that_would_break_a_markdown_table_are_escaped():
    assert table([{"a": "x|y", "b": "line\nbreak"}]).splitlines()[2] == "| x\\|y | line break |"
    assert human_bytes(1536) == "1.5 KB" and human_bytes(512) == "512 B"
