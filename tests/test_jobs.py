"""Detached-job housekeeping: finished job directories are pruned after a week, nothing else is."""

from __future__ import annotations

import os
import time

from skyplane_provider.transfer.jobs import KEEP_FINISHED_SECONDS, job_dir, prune_finished_jobs


def test_only_old_finished_jobs_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYPLANE_HOME", str(tmp_path))
    for job_id, has_result, age in (("old-done", True, KEEP_FINISHED_SECONDS + 60),
                                    ("new-done", True, 60), ("old-running", False, KEEP_FINISHED_SECONDS + 60)):
        d = job_dir(job_id)
        d.mkdir(parents=True)
        marker = d / ("result.json" if has_result else "status.json")
        marker.write_text("{}")
        then = time.time() - age
        os.utime(marker, (then, then))
    assert prune_finished_jobs() == ["old-done"]
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["new-done", "old-running"]
