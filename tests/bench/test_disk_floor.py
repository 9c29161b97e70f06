"""The block device's counters as bench.disk_floor reads them from sysfs (Documentation/block/stat.rst)."""

from __future__ import annotations

from pathlib import Path

from bench.disk_floor import DeviceCounts, measure, parse_block_stat, read_counts

# Before Linux 4.18: 11 fields, no discard or flush counters.
OLD = "    1812      211    97270     1324      917      606    29482     3308        0     2100     4630\n"
# Since 5.5: 17 fields; write I/Os are field 5, flush I/Os field 16.
NEW = (
    " 1203355   147306 58375754  5021930  9842643  2066027 234182544  1942469        0  1607560  7517314"
    "  1479050      363 124753600   232222  3617880   320692\n"
)
# 4.18 to 5.4: 15 fields (discards, no flushes).
MIDDLE = "1 2 3 4 55 6 7 8 0 10 11 12 13 14 15"


def test_the_17_field_format_gives_writes_and_flushes() -> None:
    assert parse_block_stat(NEW) == DeviceCounts(writes=9842643, flushes=3617880)


def test_the_old_formats_give_writes_and_no_flushes() -> None:
    assert parse_block_stat(OLD) == DeviceCounts(writes=917, flushes=None)
    assert parse_block_stat(MIDDLE) == DeviceCounts(writes=55, flushes=None)


def test_anything_else_is_unknown_not_an_error() -> None:
    for text in ("", "1 2 3 4", "a b c d e f g h i j k", "1 2 3 4 -5 6 7 8 9 10 11", "\x00"):
        assert parse_block_stat(text) is None


def test_a_missing_stat_file_is_unknown(tmp_path: Path) -> None:
    assert read_counts(tmp_path / "no-such-device" / "stat") is None
    assert read_counts(None) is None


def test_a_measurement_on_a_real_file_reports_its_syncs(tmp_path: Path) -> None:
    sample = measure(tmp_path, samples=5, gap_s=0.0)
    assert sample.syncs == 5 and sample.median_ms > 0
    # Where sysfs shows the device, every fdatasync wrote at least once; elsewhere the counts are unknown.
    assert sample.writes is None or sample.writes >= sample.syncs
    assert not list(tmp_path.iterdir())
