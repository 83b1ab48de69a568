"""Background jobs: progress, one running job per key, errors as one line, Stop."""

from __future__ import annotations

import time

from workbench.ui import jobs


# The job registry ------------------------------------------------------------------------------------------


def test_a_job_reports_progress_then_its_result_and_one_per_key():
    registry = jobs.JobRegistry()

    def work(job):
        for i in range(1, 4):
            job.on_step(i, 3, {"phase": "count", "value": i})
            time.sleep(0.05)
        return "done"

    job = registry.start("count", work)
    assert registry.start("count", work) is job  # one running job per key
    assert job.wait(10) and job.result == "done" and job.error is None and not job.stopped
    assert (job.step, job.total, job.fraction) == (3, 3, 1.0)
    assert [m["value"] for _, m in job.history] == [1, 2, 3] and job.phases["count"][0] == 3
    assert registry.start("count", work) is not job  # a finished job is replaced by a new run


def test_a_failing_job_keeps_one_line_and_stop_ends_work_without_a_hook():
    registry = jobs.JobRegistry()
    failed = registry.start("fail", lambda job: 1 / 0, title="Dividing")
    assert failed.wait(10) and failed.error == "Dividing failed: ZeroDivisionError: division by zero"

    def endless(job):
        while True:
            job.check_stop()
            job.on_step(1, 1, {})
            time.sleep(0.01)

    stopped = registry.start("endless", endless)
    stopped.stop()
    assert stopped.wait(10) and stopped.stopped and stopped.error is None


def test_a_job_that_fails_on_the_disk_or_is_refused_keeps_just_the_message():
    from workbench.store import StoreError

    registry = jobs.JobRegistry()
    message = "cannot write /ro/students: the folder is read-only; set WORKBENCH_HOME to a writable folder"

    def full(job):
        raise StoreError(message)

    unloaded = "m · cpu · fp32 was unloaded to make room for another recipe; reload the page"

    def refused(job):
        raise jobs.JobRefused(unloaded)

    disk, gone = registry.start("disk", full, title="Building"), registry.start("gone", refused, title="Measuring")
    assert disk.wait(10) and disk.error == message
    assert gone.wait(10) and gone.error == unloaded
