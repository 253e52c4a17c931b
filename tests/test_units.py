"""Human-sized numbers: exact parsing of counts, and printing that never falls into scientific notation."""

import pytest

from nca_datagen.units import format_bytes, format_count, parse_count, parse_grid


@pytest.mark.parametrize("n,text", [
    (999, "999"), (0.5, "0.5"), (1023, "1.02K"), (12_345_678, "12.3M"), (164_160_000, "164M"),
    (999_499, "999K"), (999_600, "1M"), (999.6, "1K"), (1.5e15, "1500T"),  # rounding up moves to the next unit
])
def test_format_count(n, text):
    assert format_count(n) == text


@pytest.mark.parametrize("n,text", [
    (1023, "1023 B"), (1536, "1.5 KiB"), (1023 * 1024, "1023 KiB"), (1024**2 - 1, "1024 KiB"),
    (5 * 2**30, "5 GiB"), (3 * 2**50, "3072 TiB"),  # binary units reach 1023.x: whole numbers, not 1.02e+03
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("text, value", [("10K", 10_000), ("164M", 164_000_000), ("2B", 2_000_000_000),
                                         ("1.5M", 1_500_000), ("164_000_000", 164_000_000), ("1e6", 10**6),
                                         ("7", 7), ("2g", 2 * 10**9)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["12Q", "", "M", "1.2345K", "-5", "1..2M"])
def test_parse_count_rejects(text):
    with pytest.raises(ValueError, match="count"):
        parse_count(text)


@pytest.mark.parametrize("text", ["1E1000000", "2E18", "9999999999T"])
def test_absurd_counts_are_a_clear_error(text):
    with pytest.raises(ValueError, match="more than 1e\\+18"):
        parse_count(text, "--tokens")


def test_counts_up_to_the_limit_parse_exactly():
    assert parse_count("1E18") == 10**18 and parse_count("1.5M") == 1_500_000
    assert parse_count("164_000_000") == 164 * 10**6


@pytest.mark.parametrize("text,grid", [("12", (12, 12)), ("12x18", (12, 18)), ("7 X 9", (7, 9)), ("8*8", (8, 8))])
def test_parse_grid(text, grid):
    assert parse_grid(text) == grid


@pytest.mark.parametrize("text", ["", "x", "12x", "1x2x3", "7y9", "1.5"])
def test_parse_grid_refuses_what_is_not_a_grid(text):
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_grid(text)
