"""The filter rules (rclone's globs, order of evaluation, size and age bounds) and the listing
prefixes they confine a listing to. The real boundary (filters applied while listing real stores,
through the CLI, Airflow and Prefect) is crossed in tests/test_features_e2e.py."""

from __future__ import annotations

import pytest

from gateway.stores.base import ObjectInfo
from planner.errors import BadOptionError, TransferError
from skyplane_provider.filters import Filter, glob_to_regex, literal_prefixes, parse_age, parse_filter_size

NOW = 1_700_000_000.0


def matches(glob: str, name: str) -> bool:
    return bool(glob_to_regex(glob).search(name))


@pytest.mark.parametrize("glob,name,hit", [
    ("file.jpg", "file.jpg", True), ("file.jpg", "dir/file.jpg", True), ("file.jpg", "afile.jpg", False),
    ("file.jpg", "dir/afile.jpg", False), ("/file.jpg", "file.jpg", True), ("/file.jpg", "dir/file.jpg", False),
    ("*.json", "a.json", True), ("*.json", "2024/01/a.json", True), ("*.json", "a.jsonl", False),
    ("/*.json", "2024/a.json", False), ("/2024/**", "2024/01/a.json", True), ("/2024/**", "2023/01/a.json", False),
    ("/20**", "2024/01/a.json", True), ("dir/*", "dir/a", True), ("dir/*", "dir/a/b", False),
    ("dir/**", "x/dir/a/b", True), ("?.txt", "a.txt", True), ("?.txt", "ab.txt", False), ("?.txt", "/.txt", False),
    ("[a-c].txt", "b.txt", True), ("[a-c].txt", "d.txt", False), ("[!a-c].txt", "d.txt", True),
    ("[^a-c].txt", "a.txt", False), ("{a,b/c}.txt", "b/c.txt", True), ("{a,b/c}.txt", "c.txt", False),
    ("/{2023,2024/{01,02}}/**", "2024/02/x", True), ("/{2023,2024/{01,02}}/**", "2024/03/x", False),
    (r"\*.txt", "*.txt", True), (r"\*.txt", "a.txt", False), ("a+b(c).txt", "a+b(c).txt", True),
])
def test_globs_match_as_rclone_documents(glob, name, hit):
    assert matches(glob, name) is hit


@pytest.mark.parametrize("glob,words", [
    ("", "empty"), ("logs/", "names a directory"), ("{{.*}}", "regular expression"), ("a***", "too many stars"),
    ("[abc", "mismatched '['"), ("a]", "mismatched ']'"), ("{a,b", "mismatched '{'"), ("a}", "mismatched '}'"),
])
def test_bad_globs_are_refused_with_what_to_write(glob, words):
    with pytest.raises(BadOptionError) as e:
        glob_to_regex(glob)
    assert words in str(e.value) and e.value.hint


def test_rclone_order_includes_then_excludes_then_filter_rules_then_the_implied_exclude():
    # The exclude comes after the include whatever the order given: *.json objects under tmp/ are taken.
    f = Filter(exclude=["tmp/**"], include=["*.json"])
    assert [str(r) for r in f.rules] == ["+ *.json", "- tmp/**", "- /**"]
    assert f.path_included("tmp/a.json") and not f.path_included("tmp/a.csv") and not f.path_included("a.csv")
    # --filter gives any order; without include there is no implied exclude.
    g = Filter(filter=["- tmp/**", "+ *.json"])
    assert not g.path_included("tmp/a.json") and g.path_included("a.csv")
    assert Filter(exclude=["*.tmp"]).path_included("a.csv") and not Filter(exclude=["*.tmp"]).path_included("x/a.tmp")


def test_size_and_age_bounds_are_inclusive_and_age_needs_a_modification_time():
    f = Filter(min_size="1KiB", max_size=2048, min_age="1h", max_age="2d", now=NOW)
    ok = ObjectInfo("a", 1024, mtime=NOW - 3600)
    assert f.bounds_pass(ok) and f.bounds_pass(ObjectInfo("a", 2048, mtime=NOW - 2 * 86400))
    assert not f.bounds_pass(ObjectInfo("a", 1023, mtime=NOW - 7200))
    assert not f.bounds_pass(ObjectInfo("a", 2049, mtime=NOW - 7200))
    assert not f.bounds_pass(ObjectInfo("a", 1500, mtime=NOW - 3599))  # too young
    assert not f.bounds_pass(ObjectInfo("a", 1500, mtime=NOW - 2 * 86400 - 1))  # too old
    with pytest.raises(TransferError, match="no modification time"):
        f.bounds_pass(ObjectInfo("a", 1500))
    assert Filter(min_size="1K").bounds_pass(ObjectInfo("a", 1024))  # no age bound: no mtime needed


@pytest.mark.parametrize("text,seconds", [
    ("90", 90), (90, 90), ("300ms", 0.3), ("1.5h", 5400), ("2h45m", 9900), ("7d", 7 * 86400), ("2w", 14 * 86400),
    ("1M", 30 * 86400), ("1y", 365 * 86400),
])
def test_durations_read_as_rclone_reads_them(text, seconds):
    assert NOW - parse_age(text, "max_age", NOW) == pytest.approx(seconds)


def test_dates_are_absolute_bounds():
    assert parse_age("2023-11-14T22:13:20Z", "max_age", NOW) == NOW
    assert parse_age("2023-11-14", "min_age", NOW) < NOW


@pytest.mark.parametrize("options,words", [
    ({"min_size": "100"}, "100KiB"), ({"max_size": "lots"}, "cannot read max_size"), ({"min_size": -1}, "negative"),
    ({"min_size": "2M", "max_size": "1M"}, "more than max_size"), ({"max_age": "yesterday"}, "cannot read max_age"),
    ({"min_age": "7d", "max_age": "1d"}, "min_age is older than max_age"), ({"min_age": "-1h"}, "cannot read"),
    ({"filter": ["* a"]}, "'+ GLOB'"), ({"include": [3]}, "globs"), ({"min_size": True}, "must be a size"),
])
def test_bad_options_say_what_to_write(options, words):
    with pytest.raises(BadOptionError) as e:
        Filter(**options, now=NOW)
    assert words in str(e.value) + (e.value.hint or "")


def test_sizes_take_binary_units():
    assert parse_filter_size("1.5K", "min_size") == 1536 and parse_filter_size("64MiB", "x") == 64 * 1024**2
    assert parse_filter_size("0B", "x") == 0 and parse_filter_size(7, "x") == 7


@pytest.mark.parametrize("options,prefixes", [
    ({}, [""]),
    ({"exclude": ["tmp/**"]}, [""]),  # an exclude leaves everything else to list
    ({"include": ["/2024/**"]}, ["2024/"]),
    ({"include": ["/2024/01/*.json", "/2024/**", "/2023/12/**"]}, ["2023/12/", "2024/"]),
    ({"include": ["/{2023,2024}/{06,07}/**"]}, ["2023/06/", "2023/07/", "2024/06/", "2024/07/"]),
    ({"include": ["/2024/**", "*.json"]}, [""]),  # an unanchored include can match anywhere
    ({"filter": ["+ /logs/**", "- **"]}, ["logs/"]),
    ({"filter": ["+ /logs/**"]}, [""]),  # no exclude-everything rule: the rest is taken too
    ({"filter": ["- **"]}, []),
    ({"include": ["/a\\*b/**"]}, ["a*b/"]),
])
def test_listing_is_confined_to_the_prefixes_the_rules_can_take(options, prefixes):
    assert Filter(**options).list_prefixes() == prefixes


def test_literal_prefixes_give_up_on_unanchored_globs_and_too_many_alternatives():
    assert literal_prefixes("*.json") is None
    many = "/" + "".join("{" + ",".join("0123456789") + "}" for _ in range(3)) + "/**"
    assert literal_prefixes(many) is None


def test_from_options_reads_a_request_and_describes_itself():
    f = Filter.from_options({"include": ["*.json"], "max_size": "1M", "exclude": None, "src": "s3://x"}, now=NOW)
    assert f.active and f.describe()[:2] == ["+ *.json", "- /**"] and "size <= 1048576 bytes" in f.describe()
    assert not Filter().active and Filter().takes(ObjectInfo("a", 1), "a")
