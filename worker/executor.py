"""One job, start to finish: claim, generate, rank, upload, record.

The database session is closed during the long GPU work and reopened to write results
(Redash's pattern), so a job never holds a connection or a transaction while it runs. The
jobs that join a job's pipeline call are worker/batching.py's to claim; the lease that keeps a
running job this worker's is worker/lease.py's.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from daikon import limits
from daikon.capabilities import UnsupportedParameters
from daikon.contract import SEED_MAX, JobParams, WebhookEvent
from db import jobs
from db.session import session_scope
from server.requests import fill_defaults
from server.settings import Settings
from server.storage import ImageStore
from worker.batching import Batcher, BatchStopped
from worker.families import Candidate
from worker.generation import GenerationRequest
from worker.images import InputUnavailable, JobImages
from worker.job_webhooks import NO_WEBHOOKS, JobEvents, StepHook
from worker.lease import LeaseKeeper, LeaseLost, same_host_owner_alive
from worker.ranking import Shortlist
from worker.runtime import ModelLoadError, ModelRuntime

log = logging.getLogger(__name__)
T = TypeVar("T")


ENDED_HERE_KEPT = 10_000  # far more than a batch's companions whose messages are in flight


class Outcome(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"  # canceled while it ran; the worker stopped between steps
    skipped = "skipped"  # not ours to run: already running elsewhere, finished or gone
    superseded = "superseded"  # the job left `running` while we worked (e.g. canceled)


class JobCanceled(Exception):
    """Raised from the step callback when the job's cancel was requested."""


class OverTime(Exception):
    """Raised from the step callback once the job has used the time its cost allows."""

    def __init__(self, seconds: float, cost: float):
        super().__init__(
            f"the job ran past its time limit of {seconds:.0f} s (allowed for its cost of "
            f"{cost:.4g} megapixel-steps)"
        )


class JobBusy(Exception):
    """Another live worker runs this job, or its model's queue is paused: the message should
    come back after `retry_in`."""

    def __init__(self, job_id: str, retry_in: float, *, paused: bool = False):
        reason = "its model's queue is paused" if paused else "it is running on another worker"
        super().__init__(f"job {job_id}: {reason}")
        self.retry_in = retry_in


@dataclass
class Member:
    """One job of a pipeline call (alone, or in a batch): its own parameters, seeds, progress,
    metrics and fate. A member that is canceled, loses its lease or fails while the batch runs
    is `stopped`: its images are dropped and the others go on."""

    job_id: str
    params: JobParams
    attempt: int
    progress: StepHook | None
    metrics: dict[str, float]
    seeds: tuple[int, ...] = ()
    # An edit job's stored inputs (Job.inputs) and, once read, its image and mask.
    inputs: dict[str, Any] | None = None
    edit: dict[str, Image.Image] = field(default_factory=dict)
    stopped: BaseException | None = None
    outcome: Outcome | None = None
    subscribed: bool = True  # it has a webhook URL (fixed at submit): its changes raise events
    tenant_id: str | None = None
    # What an identical later job shares with it (jobs.repeat_key), once its seeds are drawn.
    repeat_key: str | None = None
    since: float = field(default_factory=time.perf_counter)  # when it was claimed


class RankingFailed(Exception):
    """CLIP could not score a chunk: every job of the call fails with ranking_failed."""


class JobFailure(Exception):
    """A failure with the code a client sees in `error.code`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _as_failure(e: BaseException) -> JobFailure:
    # Checked first: a stage wraps whatever interrupted it, the time limit included.
    if isinstance(e, SoftTimeLimitExceeded) or isinstance(e.__cause__, SoftTimeLimitExceeded):
        return JobFailure("time_limit_exceeded", "the job ran past its time limit")
    if isinstance(e, OverTime):
        return JobFailure("time_limit_exceeded", str(e))
    if isinstance(e, JobFailure):
        return e
    return JobFailure("internal_error", _describe(e))


@dataclass
class JobExecutor:
    sessions: sessionmaker[Session]
    store: ImageStore
    runtime: Callable[[str], ModelRuntime]  # model name -> its loaded runtime
    worker_name: str
    settings: Settings = field(default_factory=Settings)  # the model table's defaults
    key_prefix: str = ""
    live: JobSignals = field(default_factory=lambda: NO_SIGNALS)  # progress, cancel, notices
    webhooks: JobEvents = field(default_factory=lambda: NO_WEBHOOKS)  # events for receivers
    # Called at every denoising step with the job's parameters (the chaos suite's faults).
    step_hook: Callable[[JobParams, int], None] = field(default_factory=lambda: _no_step_hook)
    lease_seconds: float = 60.0
    max_attempts: int = 3
    owner_alive: Callable[[str], bool] = same_host_owner_alive
    storage_retry_seconds: float = 0.0  # keep retrying uploads this long while storage is down
    # No job runs longer than this, whatever its cost allows (below Celery's soft limit).
    time_limit_seconds: float = 1770.0
    # Compatible queued jobs run in one pipeline call (up to the model's images per call); a
    # batch that is not full waits this long for company, only while other jobs are queued.
    batch_jobs: bool = False
    batch_wait_seconds: float = 0.0
    sleep: Callable[[float], None] = time.sleep
    # Jobs this process ended (succeeded, or failed by its own write), newest last: a batch
    # companion's own message, arriving later, is then skipped without a database round trip.
    # Sound because an ended job never runs again (a retry is a new job).
    ended_here: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Publishes a job's message (worker/context.py); None: the sweeper publishes what a message
    # handed on (a queued job whose enqueued_at was cleared), after republish_after_seconds.
    publish: Callable[[jobs.ToPublish], None] | None = None

    @property
    def images(self) -> JobImages:
        """Inputs read and results stored (worker/images.py), with the settings as they are now."""
        return JobImages(self.store, self.key_prefix, self.storage_retry_seconds)

    def _commit(
        self,
        job_id: str,
        change: Callable[[Session], T],
        event: Callable[[T], WebhookEvent | None],
        *,
        subscribed: bool = True,
    ) -> T:
        """One state change: made, with its webhook event recorded in the same transaction,
        then announced and the event published once it committed (in that order, so whoever
        hears of the change finds it in the database). `subscribed=False`: the job has no
        webhook URL, so the outbox need not read it back to find that out."""
        with session_scope(self.sessions) as session:
            result = change(session)
            happened = event(result)
            sent = (
                self.webhooks.record(session, job_id, happened)
                if happened is not None and subscribed
                else []
            )
        if happened is not None:
            self._announce(job_id)
        self.webhooks.send(sent)
        return result

    def _publish(self, message: jobs.ToPublish) -> None:
        """A job's message, published and marked so; if that fails the sweeper publishes it
        (its enqueued_at says it has none)."""
        if self.publish is None:
            return
        try:
            self.publish(message)
            with session_scope(self.sessions) as session:
                jobs.mark_enqueued(session=session, job_id=message.job_id)
        except Exception as e:
            log.warning("job %s not published (%s); the sweeper will", message.job_id, e)
            try:
                with session_scope(self.sessions) as session:
                    jobs.mark_unpublished(session=session, job_id=message.job_id)
            except Exception as e2:
                log.warning("job %s not marked unpublished: %s", message.job_id, e2)

    def _ended(self, job_id: str) -> None:
        self.ended_here[job_id] = None
        if len(self.ended_here) > ENDED_HERE_KEPT:
            self.ended_here.popitem(last=False)

    def _announce(self, job_id: str) -> None:
        try:
            self.live.announce(job_id)
        except Exception as e:  # a lost notice only delays an event stream
            log.warning("could not announce job %s: %s", job_id, e)

    def _member_step(self, member: Member, lease: LeaseKeeper) -> Callable[[int, int], None]:
        """The job's own checks at each step: the chaos hook, its lease, its cancel, its
        progress webhook. Raises to stop this job."""
        live, job_id, params = self.live, member.job_id, member.params

        def on_step(step: int, total: int) -> None:
            self.step_hook(params, step)
            if lease.lost(job_id):
                raise LeaseLost(job_id)
            if live.step(job_id, step, total, member.attempt):
                raise JobCanceled(job_id)
            if member.progress is not None:
                member.progress(step, total)

        return on_step

    def _on_step(
        self, members: list[Member], lease: LeaseKeeper, over_time: Callable[[], None]
    ) -> Callable[[int, int], None]:
        """One step of the call: the time allowance for all, then each job's own checks. A
        job alone stops the call by raising; in a batch it only stops itself, and the call ends
        when none is left."""
        steps = [(m, self._member_step(m, lease)) for m in members]

        def on_step(step: int, total: int) -> None:
            over_time()
            if len(steps) == 1:
                steps[0][1](step, total)
                return
            for member, own in steps:
                if member.stopped is not None:
                    continue
                try:
                    own(step, total)
                except (JobCanceled, LeaseLost) as e:
                    member.stopped = e
                except Exception as e:
                    member.stopped = JobFailure("generation_failed", _describe(e))
            if all(m.stopped is not None for m in members):
                raise BatchStopped()

        return on_step

    def _record_stages(self, members: list[Member]) -> None:
        try:
            self.live.record_stages(*(m.metrics for m in members))
        except Exception as e:  # a lost sample never fails the job
            log.warning(
                "stage timings of jobs %s not recorded: %s", ", ".join(m.job_id for m in members), e
            )

    def run(self, job_id: str, *, limited: bool = False) -> Outcome:
        """Run what this message may: its job, or the head of its job's queue when the job
        is queued behind it (jobs.acquire; `limited`: the message carries time limits sized
        for its own job), with compatible queued jobs when batching; raises JobBusy when
        another live worker has it or its queue is paused."""
        if job_id in self.ended_here:
            log.info("job %s not claimable (this worker ended it, in a batch)", job_id)
            return Outcome.skipped

        def acquire(session: Session) -> tuple[jobs.Acquired, JobParams | None, StepHook | None]:
            got = jobs.acquire(
                session=session,
                job_id=job_id,
                worker=self.worker_name,
                lease_seconds=self.lease_seconds,
                max_attempts=self.max_attempts,
                owner_alive=self.owner_alive,
                limited=limited,
            )
            if got.job is None:
                return got, None, None
            return (
                got,
                JobParams.model_validate(got.job.params),
                self.webhooks.progress_hook(got.job),
            )

        def raised(result: tuple[jobs.Acquired, object, object]) -> WebhookEvent | None:
            got = result[0]
            if got.gave_up is not None:  # a poison input: failed, with its event, right here
                return WebhookEvent.failed
            return WebhookEvent.started if got.job is not None else None

        got, params, progress = self._commit(job_id, acquire, raised)
        if got.handoff is not None:
            self._publish(got.handoff)
        if got.passed_over is not None:
            assert got.job is not None
            log.info(
                "job %s: its message starts job %s, ahead of it in the queue; published again",
                job_id,
                got.job.id,
            )
            self._publish(got.passed_over)
        if got.busy_for is not None:
            raise JobBusy(job_id, got.busy_for, paused=got.paused)
        if got.gave_up is not None:
            log.warning("job %s: %s", job_id, got.gave_up.error_message)
            return Outcome.failed
        if got.job is None or params is None:
            log.info("job %s not claimable (already finished, canceled or missing)", job_id)
            return Outcome.skipped
        members = [self._member(got.job, params, progress)]
        # A job retried after its worker died runs alone: a poison input then fails by itself
        # after max_attempts, never taking its batch's companions with it. So does a head this
        # message's time limits were not sized for.
        own_limits = not limited or got.passed_over is None
        if self.batch_jobs and got.job.attempts == 1 and own_limits:
            members += self._companions(got.job, params)
        with LeaseKeeper(
            self.sessions, [m.job_id for m in members], self.worker_name, self.lease_seconds
        ) as lease:
            try:
                self._generate(members, lease)
            except BaseException as e:
                if not isinstance(e, Exception) or isinstance(e, OperationalError):
                    # Not the jobs' fault: this process is being stopped (SystemExit, e.g.
                    # Celery cancelling the task when its broker connection dropped) or the
                    # database went away. Record nothing: the messages come back (or the task
                    # is retried) and the jobs are taken over once their leases lapse.
                    log.warning(
                        "job %s interrupted (%s); left for redelivery", job_id, _describe(e)
                    )
                    raise
                for member in members:
                    if member.outcome is None:
                        self._settle(member, e if member.stopped is None else member.stopped)
        self._record_stages(members)
        outcome = members[0].outcome
        assert outcome is not None
        return outcome

    def _member(self, job: jobs.Job, params: JobParams, progress: StepHook | None) -> Member:
        assert job.started_at is not None
        return Member(
            job_id=job.id,
            params=params,
            attempt=job.attempts,
            progress=progress,
            metrics={"queue_seconds": (job.started_at - job.created_at).total_seconds()},
            inputs=job.inputs,
            subscribed=bool(job.webhook_url),
            tenant_id=job.tenant_id,
        )

    def _companions(self, leader: jobs.Job, params: JobParams) -> list[Member]:
        """Queued jobs that run in the leader's pipeline call (worker/batching.py)."""
        try:
            runtime = self.runtime(params.model)
        except ModelLoadError:
            return []  # the leader fails with the reason; nothing to batch
        batcher = Batcher(
            sessions=self.sessions,
            worker_name=self.worker_name,
            lease_seconds=self.lease_seconds,
            settings=self.settings,
            webhooks=self.webhooks,
            announce=self._announce,
            wait_seconds=self.batch_wait_seconds,
            sleep=self.sleep,
        )
        return [
            self._member(c.job, c.params, c.progress)
            for c in batcher.companions(leader, params, runtime)
        ]

    def _settle(self, member: Member, e: BaseException) -> None:
        """Record how a member ended when it did not succeed."""
        job_id = member.job_id
        if isinstance(e, JobCanceled):
            log.info("job %s canceled while running; stopped", job_id)
            self._announce(job_id)
            member.outcome = Outcome.canceled
            return
        if isinstance(e, LeaseLost):
            log.warning("job %s: lease lost (taken over or finished elsewhere); stopped", job_id)
            member.outcome = Outcome.superseded
            return
        failure = _as_failure(e)
        member.metrics.setdefault("total_seconds", time.perf_counter() - member.since)
        log.warning("job %s failed: %s: %s", job_id, failure.code, failure.message)
        failed = self._commit(
            job_id,
            lambda session: jobs.fail(
                session=session,
                job_id=job_id,
                code=failure.code,
                message=failure.message,
                metrics=member.metrics,
                worker=self.worker_name,
            ),
            lambda failed: WebhookEvent.failed if failed else None,
            subscribed=member.subscribed,
        )
        member.outcome = Outcome.failed
        if failed:
            self._ended(job_id)

    def _complete(self, job_id: str, params: JobParams, runtime: ModelRuntime) -> JobParams:
        """Fill what the API could not know (a model no worker had loaded yet) from the model
        itself, and record it on the job, so the job object shows what ran."""
        if params.complete:
            return params
        filled = fill_defaults(params, self.settings, runtime.generator.capabilities)
        with session_scope(self.sessions) as session:
            jobs.record_params(
                session=session, job_id=job_id, params=filled, worker=self.worker_name
            )
        return filled

    def _read_inputs(self, member: Member) -> dict[str, Image.Image]:
        try:
            return self.images.read_inputs(member.params, member.inputs or {})
        except InputUnavailable as e:
            cause = e.__cause__
            message = (
                f"its {e.role} could not be read: {_describe(cause)}"
                if cause is not None
                else f"the job has no stored {e.role}"
            )
            raise JobFailure("input_unavailable", message) from e

    def _generate(self, members: list[Member], lease: LeaseKeeper) -> None:
        """Generate, rank, upload and record each member's images. Raises for what ends every
        member at once (the model, the time allowance, the call itself failing)."""
        started = time.perf_counter()

        # Exact repeats are answered before the model is loaded, when the API could fill every
        # default; the others once the model filled its own.
        def answered(m: Member) -> bool:
            return m.repeat_key is None and m.params.complete and self._reused(m)

        members = [m for m in members if not answered(m)]
        if not members:
            return
        model = members[0].params.model
        try:
            runtime = self.runtime(model)
        except ModelLoadError as e:
            raise JobFailure("model_load_failed", str(e)) from e
        load_seconds = time.perf_counter() - started
        running: list[Member] = []
        for member in members:
            member.metrics["load_seconds"] = load_seconds
            try:
                member.params = self._complete(member.job_id, member.params, runtime)
                if member.repeat_key is None and self._reused(member):
                    continue
                self._admit(member.params, runtime)
                member.edit = self._read_inputs(member)
                self._admit_mask(member.edit, runtime)
            except JobFailure as e:
                self._settle(member, e)  # this job only: its companions go on
                continue
            running.append(member)
        if not running:
            return
        # The allowance runs from here: loading a model is not the jobs' doing.
        cost = sum(m.params.cost for m in running)
        allowance = limits.time_allowance(cost, runtime.limits, self.time_limit_seconds)
        loaded = time.perf_counter()

        def over_time() -> None:
            if time.perf_counter() - loaded > allowance:
                raise OverTime(allowance, cost)

        requests = [self._request(m) for m in running]
        # Each job's best top_k so far: candidates are scored as chunks are drawn (a token
        # model's hundreds never held at once) and whatever the generator returns is scored
        # after, all against each job's own prompt, a chunk's jobs in one CLIP call.
        shortlists = [Shortlist(m.params.top_k) for m in running]
        ranking = 0.0

        def score(parts: list[tuple[int, int, list[Candidate]]]) -> None:
            nonlocal ranking
            parts = [p for p in parts if p[2] and running[p[0]].stopped is None]
            if not parts:
                return
            t = time.perf_counter()
            try:
                scores = runtime.ranker.score_groups(
                    [(running[i].params.prompt, images) for i, _, images in parts]
                )
            except Exception as e:
                raise RankingFailed(_describe(e)) from e
            for (i, first, images), chunk_scores in zip(parts, scores, strict=True):
                shortlists[i].add(first, images, chunk_scores)
            ranking += time.perf_counter() - t

        t = time.perf_counter()
        try:
            on_step = self._on_step(running, lease, over_time)
            # Tensors where the pipeline gives them: CLIP reads them on the generation device
            # and only the kept images cross to the CPU to be encoded (`_keep`).
            left = runtime.generator.generate(
                requests, on_step=on_step, tensors=True, on_chunk=score
            )
            score([(i, 0, images) for i, images in enumerate(left)])
        except BatchStopped:
            for member in running:
                assert member.stopped is not None
                self._settle(member, member.stopped)
            return
        except RankingFailed as e:
            failure = JobFailure("ranking_failed", str(e))
            for member in running:
                self._settle(member, member.stopped or failure)
            return
        except (JobCanceled, LeaseLost, OverTime):
            raise
        except Exception as e:
            if len(running) > 1:
                # A batch failing must not fail a job that would succeed alone: each runs by
                # itself, so the failure stays with the job that causes it.
                log.warning(
                    "batch of %d failed (%s); running each alone", len(running), _describe(e)
                )
                for member in running:
                    self._run_alone(member, lease)
                return
            raise JobFailure("generation_failed", _describe(e)) from e
        inference = time.perf_counter() - t - ranking
        for member, shortlist in zip(running, shortlists, strict=True):
            if member.stopped is not None:  # canceled or lost mid-batch: images dropped
                self._settle(member, member.stopped)
                continue
            member.metrics["inference_seconds"] = inference
            member.metrics["batch_size"] = len(running)
            member.metrics["ranking_seconds"] = ranking
            try:
                self._keep(member, shortlist, started)
            except JobFailure as e:
                self._settle(member, e)

    def _run_alone(self, member: Member, lease: LeaseKeeper) -> None:
        try:
            self._generate([member], lease)
        except Exception as e:
            if member.outcome is None:
                self._settle(member, e)

    def _admit(self, params: JobParams, runtime: ModelRuntime) -> None:
        """Checked here too, before any GPU work: the API can check only once some worker has
        published the model's capabilities and limits, and refuses with the same codes."""
        try:
            runtime.generator.capabilities.require(params)
        except UnsupportedParameters as e:
            raise JobFailure(e.code, str(e)) from e
        refusal = limits.too_large(
            params.cost,
            runtime.limits,
            model=params.model,
            device=runtime.device,
            describe=params.describe_cost(),
        )
        if refusal:
            raise JobFailure(limits.TOO_LARGE, refusal)

    def _admit_mask(self, edit: dict[str, Image.Image], runtime: ModelRuntime) -> None:
        """An inpaint mask the model would not honour exactly (a token model's completion
        band), refused before any model work, as the API refuses it once caps are published."""
        caps = runtime.generator.capabilities
        mask = edit.get("mask")
        if mask is None or not caps.checks_mask_pixels:
            return
        violations = caps.check_mask(mask.width, mask.height, mask.convert("L").tobytes())
        if violations:
            refused = UnsupportedParameters(violations)
            raise JobFailure(refused.code, str(refused))

    def _request(self, member: Member) -> GenerationRequest:
        self._draw_seeds(member)
        return GenerationRequest(member.params, member.seeds, **member.edit)

    def _draw_seeds(self, member: Member) -> None:
        """The job's candidate seeds, drawn once (a drawn seed stays the job's if its batch
        fails and it runs again alone)."""
        if member.seeds:
            return
        params = member.params
        base_seed = (
            params.seed
            if params.seed is not None
            else secrets.randbelow(SEED_MAX - params.candidates + 1)
        )
        member.seeds = tuple(base_seed + i for i in range(params.candidates))

    def _reused(self, member: Member) -> bool:
        """Key the job (its parameters complete, its seeds drawn) and, when the deployment
        reuses repeats, answer it with copies of an earlier identical job's images: it then
        succeeds as if it had run, with its own objects, events and webhook. False when it
        must run: reuse off, no earlier job, or that job's images gone."""
        self._draw_seeds(member)
        member.repeat_key = jobs.repeat_key(
            tenant_id=member.tenant_id,
            model=self.settings.model_identity(member.params.model),
            params=member.params,
            seed=member.seeds[0],
            inputs=member.inputs,
        )
        if not self.settings.worker.reuse_repeats:
            return False
        with session_scope(self.sessions) as session:
            earlier = jobs.find_repeat(
                session=session,
                tenant_id=member.tenant_id,
                key=member.repeat_key,
                job_id=member.job_id,
            )
            source = None if earlier is None else (earlier.id, list(earlier.images))
        if source is None or not source[1]:
            return False
        earlier_id, images = source
        t = time.perf_counter()
        try:
            kept = self.images.copy(member.job_id, images)
        except Exception as e:
            log.info(
                "job %s repeats job %s, whose images are unreadable (%s): it runs",
                member.job_id,
                earlier_id,
                _describe(e),
            )
            return False
        member.metrics["upload_seconds"] = time.perf_counter() - t
        member.metrics["total_seconds"] = time.perf_counter() - member.since
        self._succeed(member, kept, reused_from=earlier_id)
        if member.outcome is Outcome.succeeded:
            try:
                self.live.record_reused(member.params.model)
            except Exception as e:  # a lost count never fails the job
                log.warning("reuse of job %s not counted: %s", member.job_id, e)
        return True

    def _keep(self, member: Member, shortlist: Shortlist, started: float) -> None:
        """Upload one job's best candidates (its shortlist, best first), record success."""
        job_id, seeds, metrics = member.job_id, member.seeds, member.metrics
        images = shortlist.images
        kept_seeds = [seeds[i] for i in shortlist.indices]

        t = time.perf_counter()
        try:
            kept = self.images.keep(
                job_id, images, range(len(images)), shortlist.scores, kept_seeds
            )
        except Exception as e:
            raise JobFailure("upload_failed", _describe(e)) from e
        metrics["upload_seconds"] = time.perf_counter() - t
        metrics["total_seconds"] = time.perf_counter() - started
        self._succeed(member, kept)

    def _succeed(
        self, member: Member, kept: list[jobs.NewImage], *, reused_from: str | None = None
    ) -> None:
        """Record success with the job's stored images, its event in the same transaction."""
        job_id, metrics = member.job_id, member.metrics
        recorded = self._commit(
            job_id,
            lambda session: jobs.succeed(
                session=session,
                job_id=job_id,
                seed=member.seeds[0],
                images=kept,
                metrics=metrics,
                worker=self.worker_name,
                repeat_key=member.repeat_key,
                reused_from=reused_from,
            ),
            lambda done: WebhookEvent.succeeded if done else None,
            subscribed=member.subscribed,
        )
        if not recorded:
            # The job left `running` while we worked: its images are not ours to keep.
            self.images.discard(kept)
            member.outcome = Outcome.superseded
            return
        member.outcome = Outcome.succeeded
        self._ended(job_id)
        # One line per job that succeeded, whether it led its batch or joined one (a joined
        # job's own message later ends `skipped`): what the chaos ledger counts.
        if reused_from is None:
            log.info("job %s succeeded (batch of %d)", job_id, metrics.get("batch_size", 1))
        else:
            log.info("job %s succeeded (reused job %s)", job_id, reused_from)


class JobSignals(Protocol):
    """The fast, disposable side of a running job (server.live.LiveState in a worker)."""

    def step(self, job_id: str, step: int, total: int, attempt: int) -> bool: ...
    def announce(self, job_id: str, what: str = "status") -> None: ...
    def record_stages(self, *metrics: dict[str, float]) -> None: ...
    def record_reused(self, model: str) -> None: ...


class _NoSignals:
    """No Redis: no progress, no cancel requests, no notices (in-process tests)."""

    def step(self, job_id: str, step: int, total: int, attempt: int) -> bool:
        return False

    def announce(self, job_id: str, what: str = "status") -> None:
        pass

    def record_stages(self, *metrics: dict[str, float]) -> None:
        pass

    def record_reused(self, model: str) -> None:
        pass


NO_SIGNALS: JobSignals = _NoSignals()


def _no_step_hook(params: JobParams, step: int) -> None:
    pass
