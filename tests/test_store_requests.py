"""Store request prices (planner data): the figures their sources give, priced per region's provider."""

import pytest

from planner.store_requests import RequestCounts, request_prices, requests_usd


def test_prices_per_provider_as_their_sources_give_them():
    s3 = request_prices("aws:us-east-1")
    assert (s3.write, s3.read, s3.list, s3.delete) == (0.005, 0.0004, 0.005, 0.0)
    assert request_prices("gcp:us-central1").write == 0.005
    assert request_prices("azure:westeurope").write == pytest.approx(0.055 / 10)  # $0.055 per 10,000
    assert request_prices("local").write == 0 and request_prices("sky:a").read == 0


def test_a_count_of_requests_is_priced_per_kind():
    counts = RequestCounts(write=2000, read=10_000, list=3, head=0, delete=500)
    assert counts.total == 12_503
    assert requests_usd("aws:us-east-1", counts) == pytest.approx(2 * 0.005 + 10 * 0.0004 + 0.003 * 0.005)
    assert requests_usd("local", counts) == 0.0
    more = RequestCounts(write=1)
    more.add(counts)
    assert more.to_dict() == {"write": 2001, "read": 10_000, "list": 3, "head": 0, "delete": 500}
