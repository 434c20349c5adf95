import pytest

from waker.config.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("1h30m", 5400),
        ("0", 0),
        (42, 42),
        (1.5, 1.5),
        ("250ms", 0.25),
        ("2d", 172800),
        (" 5S ", 5),
        ("120", 120),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-3s", "fast", "15x", "", "1h 30m", True, None, [], -1, "m", float("inf")])
def test_bad_durations_say_what_is_expected(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 90, 900, 3600, 5400, 0.25, 86461])
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    "text, size",
    [
        ("16g", 16 * 1024**3),
        ("512m", 512 * 1024**2),
        ("64k", 65536),
        (1000, 1000),
        ("4GB", 4 * 1024**3),
        ("2gi", 2 * 1024**3),
    ],
)
def test_sizes(text, size):
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("bad", ["lots", "0", 0, -5, "16q", True, 1.5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)
