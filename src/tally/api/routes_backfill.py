"""`/backfills`: starting, resuming, reading and cancelling backfills (docs/backfill.md).

A backfill runs as `tally backfill UID ...`: a batch job that reads Kafka for
minutes or hours, resumable and stopped by SIGTERM, with the worker's
database role. `POST /backfills` (admin) checks what a backfill refuses at
once and has the server's launcher (`tally.backfill.launcher`) run that
command as a child process; the API shows where each stands and cancels one
(admin token); a cancelled backfill's values carry the partial marker
(`partial` on `/metric-values`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from tally.api.auth import Admin, Reader
from tally.api.body import read_json, require_object
from tally.api.deps import Pool, body_ref, json_response
from tally.api.errors import ApiError, body_errors, item, responses
from tally.api.models import NO_NUL, Moment, Text, _Wire
from tally.backfill.checks import BackfillRefused, check_metric
from tally.backfill.launcher import EARLIEST, Launch, Launcher, LaunchRefused, describe_exit
from tally.store import backfill as store

router = APIRouter(prefix="/backfills", tags=["backfills"])
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MetricUid = Annotated[
    str,
    Path(
        alias="metricUid",
        min_length=1,
        max_length=256,
        pattern=NO_NUL,
        description="The uid of the backfilled metric.",
    ),
]


class BackfillPartition(_Wire):
    topic: str
    partition: int
    from_offset: int = Field(description="The first offset the backfill counts.")
    end_offset: int = Field(description="Where the live workers started the metric.")
    next_offset: int = Field(description="Counted up to here (exclusive).")
    records: int
    duplicates: int


class Backfill(_Wire):
    metric_uid: str
    state: Literal["starting", "failed", "running", "done", "cancelled"] = Field(
        description="starting (a process of this server checks the log and waits for the"
        " workers; nothing is stored yet), failed (that process ended before it stored"
        " anything: `lastError` says why; this server's memory only), running (also while"
        " stopped: POST /backfills or run the command again to resume), done, or cancelled"
        " (the metric's values then carry `partial`)."
    )
    from_: str = Field(alias="from", description="'earliest' or the --from instant.")
    records_done: int
    records_total: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    last_error: str | None = Field(
        description="Why its last run stopped short (a refusal found after it was stored,"
        " or how this server's last process for it ended when that failed without saying),"
        " or null; cleared when a run reads again or its progress moves."
    )
    last_error_at: datetime | None
    partitions: list[BackfillPartition]


def _exactly_one_start(schema: dict[str, Any]) -> None:
    """In the schema: `from` and `fromOffsets` are not nullable, and exactly one is given."""
    properties = schema["properties"]
    properties["from"] = {
        "type": "string",
        "format": "date-time",
        "description": properties["from"]["description"],
    }
    properties["fromOffsets"] = {
        "type": "string",
        "enum": [EARLIEST],
        "description": properties["fromOffsets"]["description"],
    }
    schema["oneOf"] = [{"required": ["from"]}, {"required": ["fromOffsets"]}]


class StartBackfillRequest(_Wire):
    """Where the backfill starts: exactly one of `from` and `fromOffsets`."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_start)

    metric_uid: Text
    from_: Moment | None = Field(
        None, alias="from", description="An RFC 3339 date-time: count the records from it on."
    )
    from_offsets: Literal["earliest"] | None = Field(
        None, description="'earliest': from each partition's first record."
    )

    @field_validator("from_", "from_offsets", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:  # only a value sent is validated: null is not "left out"
            raise PydanticCustomError("not_null", "must not be null; leave the field out")
        return value


class BackfillPage(_Wire):
    items: list[Backfill]


def _launcher(request: Request) -> Launcher:
    launcher: Launcher = request.app.state.launcher
    return launcher


def _not_found(uid: str) -> ApiError:
    return ApiError.one(404, ["path", "metricUid"], f"no backfill of metric {uid!r}", "not_found")


def _unstored(uid: str, launcher: Launcher) -> dict[str, Any] | None:
    """A backfill of this server's processes that stored nothing (yet): the
    one starting, or how the last one ended; None if neither."""
    launch = launcher.current(uid)
    if launch is not None:
        return _starting(uid, launch)
    ended = launcher.last_exit(uid)
    if ended is None:
        return None
    at = ended.at.isoformat()
    return {
        **_starting(uid, Launch(ended.from_spec, ended.at, None)),
        "state": "failed",
        "updatedAt": at,
        "finishedAt": at,
        "lastError": describe_exit(ended),
        "lastErrorAt": at,
    }


def _starting(uid: str, launch: Launch) -> dict[str, Any]:
    """A backfill this server's child is preparing, before it stores its row."""
    at = launch.at.isoformat()
    return {
        "metricUid": uid,
        "state": "starting",
        "from": launch.from_spec,
        "recordsDone": 0,
        "recordsTotal": 0,
        "createdAt": at,
        "updatedAt": at,
        "finishedAt": None,
        "lastError": None,
        "lastErrorAt": None,
        "partitions": [],
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_start(document: dict[str, Any]) -> StartBackfillRequest:
    try:
        wanted = StartBackfillRequest.model_validate(document)
    except ValidationError as exc:
        raise body_errors(exc) from None
    if (wanted.from_ is None) == (wanted.from_offsets is None):
        said = "give exactly one of from and fromOffsets" + (
            "" if wanted.from_ is None else ", not both"
        )
        raise ApiError(
            422,
            [
                item(["body", "from"], said, "start_required"),
                item(["body", "fromOffsets"], said, "start_required"),
            ],
        )
    return wanted


def _conflict(loc: list[str | int], message: str) -> ApiError:
    return ApiError.one(409, loc, message, "conflict")


@router.post(
    "",
    status_code=202,
    response_model=Backfill,
    responses=responses(401, 403, 404, 409, 413, 415, 422),
    openapi_extra=body_ref("StartBackfillRequest", "The metric and where its backfill starts."),
    summary="Start or resume a backfill (admin)",
)
async def start_backfill(request: Request, principal: Admin, pool: Pool) -> Response:
    """Checks what a backfill refuses at once (404: no such metric; 409: `from`
    before 1970, EXTERNAL,
    deleted, refused by the workers, older than migration 0008, done, cancelled,
    stored with another start, or running in a process of this server), then
    starts `tally backfill` in a child process of this server and answers 202
    with the backfill (`starting` until the process stores it; a stored one
    that is `running` but has no process, killed or stopped, resumes). Follow
    it at the Location, `GET /backfills/{metricUid}`: a refusal the process
    finds later (retention) is its `lastError`, also when it ended before
    storing anything (state `failed`)."""
    document = require_object(await read_json(request))
    wanted = _parse_start(document)
    uid = wanted.metric_uid
    launcher = _launcher(request)
    uid_loc: list[str | int] = ["body", "metricUid"]
    async with pool.acquire() as connection:
        try:
            await check_metric(connection, uid)
        except BackfillRefused as exc:
            status = 404 if exc.kind == "not_found" else 409
            raise ApiError.one(status, uid_loc, str(exc), exc.kind) from None
        existing = await store.load_backfill(connection, uid)
    if wanted.from_ is not None and wanted.from_ < _EPOCH:
        # A valid date-time, but Kafka keeps no record time before the epoch.
        raise _conflict(
            ["body", "from"],
            "from is before 1970-01-01T00:00:00Z, the earliest record time;"
            " use fromOffsets 'earliest' to count from the start",
        )
    spec = EARLIEST if wanted.from_ is None else _iso(wanted.from_)
    if existing is not None:
        if existing.state == store.CANCELLED:
            raise _conflict(
                uid_loc,
                f"the backfill of {uid!r} was cancelled; its values cover part of the range and"
                " say so. A new backfill needs a new metric (a new uid)",
            )
        if existing.state == store.DONE:
            raise _conflict(uid_loc, f"the backfill of {uid!r} is done")
        same = (
            existing.from_time is None
            if wanted.from_ is None
            else existing.from_time is not None and existing.from_time == wanted.from_
        )
        if not same:
            stored = (
                '{"fromOffsets": "earliest"}'
                if existing.from_time is None
                else f'{{"from": "{_iso(existing.from_time)}"}}'
            )
            raise _conflict(
                ["body", "from" if wanted.from_ is not None else "fromOffsets"],
                f"a backfill of {uid!r} from {existing.from_spec} exists ({existing.state});"
                f" resume it with {stored}",
            )
        spec = existing.from_spec  # as stored: the process compares it as text
    if launcher.current(uid) is not None:
        raise _conflict(uid_loc, f"a backfill of {uid!r} runs in a process of this server")
    try:
        launch = await launcher.launch(uid, spec)
    except LaunchRefused as exc:
        raise _conflict(uid_loc, str(exc)) from None
    body = store.document(existing) if existing is not None else _starting(uid, launch)
    return json_response(body, 202, headers={"Location": f"/backfills/{uid}"})


@router.get(
    "", response_model=BackfillPage, responses=responses(401, 403, 422), summary="List backfills"
)
async def list_backfills(request: Request, principal: Reader, pool: Pool) -> Response:
    """Stored backfills, and those a process of this server is starting."""
    launcher = _launcher(request)
    async with pool.acquire() as connection:
        found = await store.list_backfills(connection)
    stored = {b.metric_uid for b in found}
    starting = [
        _starting(uid, launch)
        for uid, launch in sorted(launcher.launches().items())
        if uid not in stored
    ]
    # (failed ones are shown by GET /backfills/{metricUid} only)
    shown = [_with_exit(store.document(b), b, launcher) for b in found]
    return json_response({"items": shown + starting})


@router.get(
    "/{metricUid}",
    response_model=Backfill,
    responses=responses(401, 403, 404, 422),
    summary="Read a backfill's progress",
)
async def read_backfill(
    request: Request, principal: Reader, pool: Pool, uid: MetricUid
) -> Response:
    """The stored backfill; `starting` while a process of this server prepares
    it; 404 otherwise, saying how this server's last process for it ended.
    A stored one whose last process of this server failed (crashed, killed)
    without storing why shows how it ended as its `lastError`."""
    launcher = _launcher(request)
    async with pool.acquire() as connection:
        found = await store.load_backfill(connection, uid)
    if found is None:
        unstored = _unstored(uid, launcher)
        if unstored is None:
            raise _not_found(uid)
        return json_response(unstored)
    return json_response(_with_exit(store.document(found), found, launcher))


# How a child's exit shows when it says nothing of its own: it just stopped.
_QUIET_EXITS = ("done", "stopped", "cancelled")


def _with_exit(body: dict[str, Any], found: store.Backfill, launcher: Launcher) -> dict[str, Any]:
    """A stored backfill that is running with no process of this server, and
    whose last such process ended badly (crashed, killed, refused) after the
    row was stored and wrote no error of its own: `lastError` says how that
    process ended, so a crashed backfill does not look merely stopped."""
    ended = launcher.last_exit(found.metric_uid)
    if (
        found.state != store.RUNNING
        or found.last_error is not None
        or ended is None
        or ended.outcome in _QUIET_EXITS
        or ended.at < found.created_at
        or launcher.current(found.metric_uid) is not None
    ):
        return body
    return {**body, "lastError": describe_exit(ended), "lastErrorAt": ended.at.isoformat()}


@router.post(
    "/{metricUid}/cancel",
    response_model=Backfill,
    responses=responses(401, 403, 404, 409, 422),
    summary="Cancel a running backfill (admin)",
)
async def cancel_backfill(
    request: Request, principal: Admin, pool: Pool, uid: MetricUid
) -> Response:
    """The process running it stops at its next flush, writing nothing more;
    the values it wrote stay, marked `partial`. Cancelling a cancelled
    backfill again is a no-op; a done one cannot be cancelled (409), nor one
    that is starting or failed (409: nothing is stored to cancel)."""
    async with pool.acquire() as connection:
        state = await store.cancel(connection, uid)
        found = await store.load_backfill(connection, uid)
    if state is None or found is None:
        unstored = _unstored(uid, _launcher(request))
        if unstored is None:
            raise _not_found(uid)
        raise ApiError.one(
            409,
            ["path", "metricUid"],
            f"the backfill of {uid!r} is {unstored['state']}: nothing is stored to cancel yet",
            "conflict",
        )
    if state != store.CANCELLED:
        raise ApiError.one(
            409, ["path", "metricUid"], f"the backfill of {uid!r} is {state}", "conflict"
        )
    return json_response(store.document(found))
