"""`mount` of an artifact: every artifact is saved as the job writes it, so a workflow's
`mount: true` is accepted and changes nothing; the job no longer carries it, and records
written when it did still read."""

from __future__ import annotations

from dstack.run.record import RunRecord
from dstack.run.submit import make_job
from dstack.spec.validation import validate_workflow


def test_mount_is_accepted_and_the_job_is_the_same_without_it() -> None:
    base = {"provider": "bash", "commands": ["true"]}
    mounted = validate_workflow({**base, "artifacts": [{"path": "out", "mount": True}]})
    plain = validate_workflow({**base, "artifacts": ["out"]})
    assert mounted.artifacts[0].mount and not plain.artifacts[0].mount
    job = make_job(mounted, [], {})
    assert job.model_dump(mode="json")["artifacts"] == [{"path": "out"}]
    assert job == make_job(plain, [], {}).model_copy(update={"token": job.token})


def test_a_record_that_has_mount_still_reads() -> None:
    record = RunRecord.model_validate({
        "name": "r", "provider": "bash", "profile": "local", "backend": "local", "stack": "run-r",
        "job": {"provider": "bash", "artifacts": [{"path": "out", "mount": True}]}})
    assert [a.path for a in record.job.artifacts] == ["out"]
    assert "mount" not in record.model_dump(mode="json")["job"]["artifacts"][0]
    written = record.model_dump(mode="json")
    assert RunRecord.model_validate(written).model_dump(mode="json") == written
