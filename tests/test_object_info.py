"""ObjectInfo.to_dict, what listing pages and a job's handover carry between processes: every field,
and ``ObjectInfo(**d)`` gives the same object back."""

from __future__ import annotations

import dataclasses

from gateway.stores.base import ObjectInfo


def test_to_dict_has_every_field_and_round_trips():
    full = ObjectInfo("a/b", 3, etag="e", mtime=1.5, md5="0" * 32, crc32c="1a2b3c4d")
    assert set(full.to_dict()) == {f.name for f in dataclasses.fields(ObjectInfo)}
    assert full.to_dict() == dataclasses.asdict(full)
    bare = ObjectInfo("k", 0)
    assert ObjectInfo(**full.to_dict()) == full and ObjectInfo(**bare.to_dict()) == bare
