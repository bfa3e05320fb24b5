"""`daikon`: the command line, on the Python client (daikon/client). docs/client.md shows it.

Exit codes: 0 the job succeeded (or the command did what it says), 1 the job failed or was
canceled, 2 a usage error or an error answer from the API (its message and code are printed),
130 interrupted, leaving the job running.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.prompt import Confirm
from rich.table import Table
from rich.text import Text

from daikon.client import APIConnectionError, APIError, ConflictError, Daikon, DaikonError
from daikon.client.models import (
    DoneEvent,
    JobEvent,
    JobOut,
    JobRequest,
    JobStatus,
    ProgressEvent,
    StatusEvent,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(
    name="daikon",
    help="Generate images with a Daikon deployment and manage its jobs.",
    epilog="Configuration: DAIKON_URL and DAIKON_API_KEY (or --url, --key). Exit codes: 0 "
    "succeeded, 1 job failed or canceled, 2 usage or API error, 130 interrupted (job left "
    "running).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tenants_app = typer.Typer(help="Tenants (admin keys only).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (admin keys only).", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")

# No markup: prompts, messages and codes such as "[invalid_api_key, ...]" print as they are.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's JSON (for scripts).")]


@dataclass
class Config:
    url: str | None
    key: str | None

    def client(self) -> Daikon:
        return Daikon(self.url, self.key)


@app.callback()
def _options(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", envvar="DAIKON_URL", help="The API's base URL.")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", envvar="DAIKON_API_KEY", help="An API key.", show_default=False),
    ] = None,
) -> None:
    ctx.obj = Config(url, key)


def _client(ctx: typer.Context) -> Daikon:
    config: Config = ctx.obj
    return config.client()


def _print_json(data: Any) -> None:
    """Plain JSON on stdout (no colour, no wrapping): what scripts parse."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


# --- following a job -------------------------------------------------------------------------


class Display:
    """A live progress bar on a terminal; elsewhere one line per change (logs stay readable)."""

    def __init__(self, job_id: str, enabled: bool):
        self.job_id = job_id
        self.enabled = enabled
        self.live = enabled and err.is_terminal
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._last = ""
        self._tenth = -1

    @contextmanager
    def shown(self) -> Iterator[Display]:
        if not self.live:
            yield self
            return
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        self.task = self.progress.add_task(f"{self.job_id[:8]} submitted", total=None)
        with self.progress:
            yield self

    def __call__(self, event: JobEvent) -> None:
        if not self.enabled:
            return
        if isinstance(event, StatusEvent):
            position = event.data.queue_position
            text = (
                f"queued, position {position}"
                if event.data.status is JobStatus.queued
                else event.data.status.value
            )
            self._show(text)
        elif isinstance(event, ProgressEvent):
            p = event.data
            self._show(f"running, step {p.step}/{p.total}", p.step, p.total)
        elif isinstance(event, DoneEvent):
            self._show(event.job.status.value, done=True)

    def _show(
        self, text: str, step: int | None = None, total: int | None = None, done: bool = False
    ) -> None:
        if self.progress is not None and self.task is not None:
            description = f"{self.job_id[:8]} {text.split(',')[0]}"
            if step is None and not done:
                description = f"{self.job_id[:8]} {text}"
            self.progress.update(self.task, description=description, completed=step, total=total)
            if done:
                task = self.progress.tasks[0]
                self.progress.update(self.task, completed=task.total or 1, total=task.total or 1)
        elif self._worth_a_line(text, step, total):
            err.print(f"{self.job_id} {text}")
        self._last = text

    def _worth_a_line(self, text: str, step: int | None, total: int | None) -> bool:
        """On a pipe, a line for each status and each tenth of the steps (logs stay short)."""
        if step is None or not total:
            return text != self._last
        tenth = step * 10 // total
        if tenth <= self._tenth:
            return False
        self._tenth = tenth
        return True


def follow(daikon: Daikon, job_id: str, *, show: bool, poll: bool = False) -> JobOut:
    """Wait for the job with a live display. Ctrl-C asks whether to cancel it."""
    display = Display(job_id, show)
    try:
        with display.shown():
            return daikon.wait(job_id, on_event=display, poll=poll)
    except KeyboardInterrupt:
        pass
    try:
        cancel = Confirm.ask(f"\nCancel job {job_id}?", console=err, default=False)
    except (KeyboardInterrupt, EOFError):
        cancel = False
    if not cancel:
        err.print(f"Left running. Follow it with: daikon wait {job_id}")
        raise typer.Exit(EXIT_INTERRUPTED)
    try:
        job = daikon.cancel(job_id)
    except ConflictError as e:  # it finished meanwhile
        err.print(f"Not canceled: {e.message}")
        return daikon.get(job_id)
    err.print(f"Canceled job {job_id}.")
    return job


def finish(daikon: Daikon, job: JobOut, *, directory: Path | None, as_json: bool) -> None:
    """Save the images, print the outcome, exit with the job's code."""
    paths = daikon.save_images(job, directory) if directory and job.images else []
    if as_json:
        _print_json(job)
    elif job.status is JobStatus.succeeded:
        if paths:
            out.print(f"Saved {len(paths)} image(s) of job {job.id}, best first:")
            for image, path in zip(sorted(job.images, key=lambda i: i.rank), paths, strict=True):
                out.print(f"  rank {image.rank}  clip {image.clip_score:6.2f}  {path}")
        else:
            for image in job.images:
                out.print(f"  rank {image.rank}  clip {image.clip_score:6.2f}  {image.url}")
    else:
        reason = f": {job.error.code}: {job.error.message}" if job.error else ""
        err.print(f"Job {job.id} {job.status.value}{reason}")
    raise typer.Exit(EXIT_OK if job.status is JobStatus.succeeded else EXIT_JOB_FAILED)


# --- jobs ------------------------------------------------------------------------------------


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    candidates: Annotated[int | None, typer.Option(help="Images generated.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Images kept after CLIP ranking.")] = None,
    seed: Annotated[int | None, typer.Option(help="Base seed (image i: seed + i).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    width: Annotated[int | None, typer.Option()] = None,
    height: Annotated[int | None, typer.Option()] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="Guidance scale.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What to steer away from.")] = None,
    model: Annotated[str | None, typer.Option(help="A name from `daikon models`.")] = None,
    scheduler: Annotated[str | None, typer.Option()] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Token models: sampling temperature of each token.")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Token models: nucleus sampling of each token.")
    ] = None,
    top_k_tokens: Annotated[
        int | None, typer.Option(help="Token models: draw each token from the k most likely.")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="0-9, higher runs first.")] = None,
    metadata: Annotated[str | None, typer.Option(help="A JSON object stored with the job.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where job events are POSTed.")] = None,
    image: Annotated[
        Path | None,
        typer.Option(
            help="Edit this image (PNG, JPEG, WebP): image-to-image, or inpaint with --mask.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            help="Inpaint: white = repaint, black = keep; the image's size.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    image_id: Annotated[
        str | None,
        typer.Option(help="Edit an earlier image instead of --image: `<job id>:<rank>`."),
    ] = None,
    mask_id: Annotated[str | None, typer.Option(help="An earlier mask: `<job id>:mask`.")] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="text, image or inpaint (default: inpaint with a mask, image with an image)."
        ),
    ] = None,
    strength: Annotated[
        float | None, typer.Option(help="Edits: noise added to the input, 0-1.")
    ] = None,
    mask_blur: Annotated[
        int | None, typer.Option(help="Inpaint: blur the mask's edge (px).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where the kept images go.")] = Path("."),
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the job and save its images.")
    ] = True,
    as_json: JsonFlag = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Retrying with the same key answers the same job (default: a fresh one)."
        ),
    ] = None,
) -> None:
    """Submit a prompt; with --wait (the default) follow it and save the kept images."""
    # Each option named as a JobRequest field is sent as that field (mode and metadata are
    # checked and parsed below first).
    options = locals()
    fields: dict[str, Any] = {
        name: options[name]
        for name in JobRequest.model_fields
        if name not in ("prompt", "mode", "metadata") and options.get(name) is not None
    }
    if mode is None and (image is not None or image_id is not None):
        mode = "inpaint" if mask is not None or mask_id is not None else "image"
    if mode is not None:
        if mode not in ("text", "image", "inpaint"):
            raise typer.BadParameter("text, image or inpaint", param_hint="--mode")
        fields["mode"] = mode
    if metadata is not None:
        try:
            fields["metadata"] = json.loads(metadata)
        except json.JSONDecodeError as e:
            raise typer.BadParameter(f"not JSON: {e}", param_hint="--metadata") from None
    with _client(ctx) as daikon:
        job = daikon.submit(
            prompt, idempotency_key=idempotency_key, image=image, mask=mask, **fields
        )
        if not wait:
            if as_json:
                _print_json(job)
            else:
                out.print(job.id)
            return
        if not as_json:
            err.print(f"Submitted job {job.id}")
        finish(daikon, follow(daikon, job.id, show=not as_json), directory=out_dir, as_json=as_json)


@app.command("wait")
def wait_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Save the images here.")] = None,
    poll: Annotated[bool, typer.Option(help="Poll instead of following the events.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Follow a job until it ends; exit 0 if it succeeded, 1 if not."""
    with _client(ctx) as daikon:
        job = follow(daikon, job_id, show=not as_json, poll=poll)
        finish(daikon, job, directory=out_dir, as_json=as_json)


def _prompt_excerpt(job: JobOut, width: int = 40) -> str:
    p = job.params.prompt
    return p if len(p) <= width else p[: width - 1] + "…"


@app.command()
def jobs(
    ctx: typer.Context,
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    model: Annotated[str | None, typer.Option(help="Only jobs of this model.")] = None,
    created_after: Annotated[
        str | None,
        typer.Option(
            help="Only jobs created after this time (ISO 8601 with a zone: 2026-12-01T00:00Z)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    show_all: Annotated[bool, typer.Option("--all", help="Every job (all pages).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    with _client(ctx) as daikon:
        found = daikon.list(
            status=status,
            model=model,
            created_after=created_after,
            page_size=min(max(limit, 1), 100),
        )
        rows = list(found if show_all else itertools.islice(found, max(limit, 0)))
    if as_json:
        _print_json([j.model_dump(mode="json") for j in rows])
        return
    table = Table(box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=36)  # whole: people copy it
    for name in ("status", "created", "model"):
        table.add_column(name, no_wrap=True)
    table.add_column("prompt")  # the one that wraps in a narrow terminal
    table.add_column("images", justify="right", no_wrap=True)
    table.add_column("best clip", justify="right", no_wrap=True)
    for j in rows:
        best = max((i.clip_score for i in j.images), default=None)
        table.add_row(
            j.id,
            j.status.value,
            j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            j.params.model,
            _prompt_excerpt(j),
            str(len(j.images)),
            f"{best:.2f}" if best is not None else "",
        )
    out.print(table)


@app.command()
def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one job."""
    with _client(ctx) as daikon:
        job = daikon.get(job_id)
    if as_json:
        _print_json(job)
        return
    table = Table(show_header=False, box=None)
    p = job.params
    rows = [
        ("id", job.id),
        ("status", job.status.value),
        ("prompt", p.prompt),
        ("model", p.model),
        ("size", f"{p.width}x{p.height}"),
        ("steps", str(p.steps)),
        ("candidates / top_k", f"{p.candidates} / {p.top_k}"),
        ("seed", str(p.seed)),
        ("created", str(job.created_at)),
        ("started", str(job.started_at or "")),
        ("finished", str(job.finished_at or "")),
    ]
    if job.queue_position is not None:
        rows.append(("queue position", str(job.queue_position)))
    if job.progress is not None:
        rows.append(("progress", f"step {job.progress.step}/{job.progress.total}"))
    if job.error is not None:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    for image in job.images:
        rows.append((f"image {image.rank}", f"clip {image.clip_score:.2f}  {image.url}"))
    for k, v in rows:
        table.add_row(Text(k, style="bold"), v)
    out.print(table)


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Cancel a queued or running job."""
    with _client(ctx) as daikon:
        job = daikon.cancel(job_id)
    if as_json:
        _print_json(job)
    else:
        out.print(f"Job {job.id} {job.status.value}.")


@app.command()
def models(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The models jobs may name, with their workers and queues."""
    with _client(ctx) as daikon:
        listed = daikon.models()
    if as_json:
        _print_json(listed)
        return
    table = Table(
        "name", "default", "workers", "queued", "device", "family", box=None, header_style="bold"
    )
    for m in listed.models:
        caps = m.capabilities
        family = f"{caps.family} {caps.native_width}x{caps.native_height}" if caps else ""
        table.add_row(
            m.name,
            "yes" if m.default else "",
            str(m.workers),
            str(m.queued),
            m.device or "",
            family,
        )
    out.print(table)


# --- admin -----------------------------------------------------------------------------------


@tenants_app.command("create")
def tenants_create(
    ctx: typer.Context, name: Annotated[str, typer.Argument()], as_json: JsonFlag = False
) -> None:
    """Create a tenant."""
    with _client(ctx) as daikon:
        tenant = daikon.create_tenant(name)
    if as_json:
        _print_json(tenant)
    else:
        out.print(f"Tenant {tenant.name}: {tenant.id}")


@tenants_app.command("list")
def tenants_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List tenants."""
    with _client(ctx) as daikon:
        listed = daikon.tenants()
    if as_json:
        _print_json(listed)
        return
    table = Table("id", "name", "created", box=None, header_style="bold")
    for t in listed.tenants:
        table.add_row(t.id, t.name, str(t.created_at))
    out.print(table)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant_id: Annotated[str, typer.Argument(help="The tenant's id.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    admin: Annotated[bool, typer.Option(help="An admin key.")] = False,
    scope: Annotated[
        str | None, typer.Option(help="tenant, admin or operator (dashboard, read-only).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; it is shown this once."""
    with _client(ctx) as daikon:
        new = daikon.create_key(tenant_id, name=name, admin=admin, scope=scope)
    if as_json:
        _print_json(new)
        return
    err.print(f"Key {new.id} ({new.prefix}...) for tenant {new.tenant_id}; it is shown only now:")
    out.print(new.key)


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    tenant_id: Annotated[str, typer.Argument(help="The tenant's id.")],
    as_json: JsonFlag = False,
) -> None:
    """List a tenant's keys (never the keys themselves)."""
    with _client(ctx) as daikon:
        listed = daikon.keys(tenant_id)
    if as_json:
        _print_json(listed)
        return
    table = Table(
        "id", "name", "prefix", "scope", "created", "revoked", box=None, header_style="bold"
    )
    for k in listed.keys:
        table.add_row(
            k.id, k.name, k.prefix, k.scope.value, str(k.created_at), str(k.revoked_at or "")
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke an API key (at once; revoking again changes nothing)."""
    with _client(ctx) as daikon:
        key = daikon.revoke_key(key_id)
    if as_json:
        _print_json(key)
    else:
        out.print(f"Key {key.id} revoked at {key.revoked_at}.")


# --- entry point -----------------------------------------------------------------------------


def main() -> None:
    """The console script: the API's errors as one line (message and code), never a traceback."""
    try:
        app()
    except APIError as e:
        param = f", param {e.param}" if e.param else ""
        err.print(f"Error: {e.message} [{e.code}, HTTP {e.status}{param}]")
        sys.exit(EXIT_ERROR)
    except APIConnectionError as e:
        err.print(f"Error: cannot reach the API: {e}")
        sys.exit(EXIT_ERROR)
    except DaikonError as e:
        err.print(f"Error: {e}")
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
