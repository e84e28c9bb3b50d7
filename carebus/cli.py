"""The `carebus` command line. Run `carebus --help`."""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from foundation.clock import now_ms
from foundation.config import ConfigError, load_settings, require_own_secrets

app = typer.Typer(help="carebus: event-streaming interoperability bus for a London shared record.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console()


def _settings():
    try:
        return load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _service_settings():
    """Settings for a service that handles patient data: never with the published dev secrets."""
    settings = _settings()
    try:
        require_own_secrets(settings)
    except ConfigError as exc:
        console.print(f"[red]refusing to start:[/red] {exc}")
        raise typer.Exit(2) from None
    return settings


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


@app.command()
def up() -> None:
    """Start the embedded Kafka (KRaft) and Redis if not running, and create the topics."""
    from carebus import kafka_server, local_bus, redis_server

    settings = _settings()
    try:
        states = local_bus.up(settings)
    except (kafka_server.KafkaSetupError, redis_server.RedisSetupError) as exc:
        _fail(exc)
        return
    table = Table("topic", "partitions", "state")
    bad = False
    for s in states:
        bad |= bool(s.problems)
        table.add_row(s.name, str(s.partitions), "; ".join(s.problems) or ("created" if s.created else "ok"))
    console.print(table)
    console.print(f"Kafka: {settings.bootstrap}   Redis: {settings.redis}")
    if bad:
        raise typer.Exit(1)


@app.command()
def topics() -> None:
    """Create and verify the catalogued topics on the configured cluster (no servers started)."""
    from carebus import topic_admin

    states = topic_admin.ensure_topics(_settings())
    for s in states:
        console.print(f"{s.name}: {'; '.join(s.problems) or 'ok'}")
    if any(s.problems for s in states):
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop the Kafka and Redis processes `carebus up` started (data is kept)."""
    from carebus import local_bus

    local_bus.down(_settings())
    console.print("stopped")


@app.command()
def status() -> None:
    """Show which embedded servers are running."""
    from carebus import local_bus

    settings = _settings()
    st = local_bus.status(settings)
    for node, alive in st.kafka_nodes.items():
        console.print(f"kafka node {node}: {'running' if alive else 'stopped'}")
    console.print(f"redis: {'running' if st.redis else 'stopped'}")
    if st.external_kafka:
        console.print(f"(using external Kafka {settings.bootstrap})")


@app.command()
def connectors() -> None:
    """Run the vendor connectors: MLLP (Cerner, RiO), FHIR REST (EMIS, Cerner), file drops (EMIS, Vision)."""
    from carebus import event_loop
    from producers.connector_service import serve
    from producers.mllp_senders import SendersFileError

    try:
        event_loop.run(serve(_service_settings()))
    except (ConfigError, SendersFileError) as exc:    # raised before anything starts (mllp_security)
        console.print(f"[red]refusing to start:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def simulate(
    people: int = typer.Option(1000, help="population size (up to millions; memory ~1 KB per source record)"),
    seed: int = typer.Option(7, help="random seed: the same seed gives the same population and faults"),
    truth: str = typer.Option(".carebus/ground-truth.jsonl", help="where to write which source records are one person"),
    host: str = typer.Option("127.0.0.1", help="where the connectors listen"),
    connections: int = typer.Option(4, help="parallel MLLP connections / HTTP senders per system"),
    missing_nhs: float = typer.Option(0.05), mistyped_nhs: float = typer.Option(0.02),
    nickname: float = typer.Option(0.05), swapped_names: float = typer.Option(0.02),
    double_barrelled: float = typer.Option(0.02), moved_address: float = typer.Option(0.08),
    birth_date_typo: float = typer.Option(0.02),
) -> None:
    """Send synthetic London traffic through the running connectors (MLLP, FHIR REST, file drop)."""
    import asyncio
    from pathlib import Path

    from simulator import population as pop
    from simulator.run import Target, drive, write_truth

    settings = _settings()
    rates = pop.FaultRates(missing_nhs, mistyped_nhs, nickname, swapped_names, double_barrelled, moved_address,
                           birth_date_typo)
    population = pop.build(people, seed, rates)
    write_truth(population, Path(truth))
    console.print(f"{people} people, {len(population.records)} source records; ground truth in {truth}")
    stats = asyncio.run(drive(population, Target(host, settings.mllp_port, settings.http_port, settings.drop_dir),
                              seed, connections))
    console.print(f"sent {stats.sent}, acknowledged {stats.acked}, rejected {stats.rejected}, retried {stats.retried}")


@app.command("link-worker")
def link_worker(worker_id: str = typer.Option("", help="a name for this worker in Kafka's client id"),
                status_port: int = typer.Option(-1, help="serve /health, /ready, /metrics on 127.0.0.1:PORT "
                                                         "(default CAREBUS_LINK_WORKER_STATUS_PORT; 0 off)")) -> None:
    """Run one identity-linking / shared-record worker (batched, lock-free). Start several to scale out."""
    from streams.identity_store import IndexLayoutError
    from streams.link_worker import run_worker

    settings = _service_settings()
    try:
        run_worker(settings, worker_id, settings.link_worker_status_port if status_port < 0 else status_port)
    except IndexLayoutError as exc:
        _fail(exc)


@app.command()
def delivery() -> None:
    """Run the subscriber API, push delivery, review queue, audit API, monitoring and dashboard."""
    from carebus import event_loop
    from consumers.delivery_service import serve

    event_loop.run(serve(_service_settings()))


@app.command()
def demo(
    people: int = typer.Option(3000, help="synthetic Londoners to send through the bus"),
    batch: int = typer.Option(500, help="people per traffic batch"),
    duration: float = typer.Option(-1, help="seconds to keep running after the traffic (-1: until Ctrl-C, 0: until settled)"),
    live: bool = typer.Option(True, help="show the live table"),
    seed: int = typer.Option(0, help="population seed (0: a new population every run)"),
) -> None:
    """The main job: start everything on the embedded default and run synthetic London traffic through it."""
    from carebus.demo import run

    import time

    # The connectors recognise redelivered messages, so a rerun needs new people to show traffic.
    raise typer.Exit(run(_settings(), people, batch, duration, live, seed or int(time.time()) % 1_000_000))


@app.command("estimate-linkage")
def estimate_linkage(
    output: str = typer.Option("", help="where to write the fitted parameters (default <data dir>/linkage_parameters.json)"),
    limit: int = typer.Option(500_000, help="most source events to read"),
) -> None:
    """Fit the Fellegi-Sunter m/u parameters by EM to the demographics on the source-events topic."""
    import uuid
    from pathlib import Path

    from confluent_kafka import Consumer
    from rich.progress import Progress

    from schemas import codec
    from schemas.topics import SOURCE_EVENTS
    from streams import record_builder
    from schemas.topics import source_event_key
    from streams.linkage_training import estimate_from
    from streams.record_comparison import from_patient

    settings = _settings()
    consumer = Consumer(settings.kafka_client({"group.id": f"carebus-estimate-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    consumer.subscribe([SOURCE_EVENTS.name])
    states: dict = {}
    idle = 0
    with Progress(console=console) as progress:
        task = progress.add_task("reading source events", total=None)
        read = 0
        while read < limit and idle < 10:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                idle += 1
                continue
            idle = 0
            event = codec.decode(msg.value(), "SourcePatientEvent")
            key = source_event_key(event)
            states[key], _ = record_builder.apply_event(states.get(key) or record_builder.new_source_state(key, event), event)
            read += 1
            progress.advance(task)
    consumer.close()
    records = [from_patient(k, record_builder.patient_view(s)) for k, s in states.items()]
    params = estimate_from(records)
    target = Path(output) if output else settings.fitted_linkage_parameters
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(params.to_json())
    from carebus.linkage_report import print_report

    print_report(params, console)
    console.print(f"fitted on {len(records):,} source records; written to {target}. Link workers load it when "
                  f"they start; `carebus relink` applies it to the links already made.")


@app.command()
def relink(batch: int = typer.Option(500, help="records re-decided per batch")) -> None:
    """Re-decide every link from the stored demographics with the current parameters.

    Run it after `carebus estimate-linkage` (or a new parameters file): links that the new
    parameters no longer support are removed and new ones made, with identity events and record
    changes for what changed only. Safe while the bus is live.
    """
    from rich.progress import Progress

    from streams.link_worker import create_stage

    settings = _settings()
    stage = create_stage(settings)
    changed = 0
    with Progress(console=console) as progress:
        task = progress.add_task("relinking", total=stage.graph.size())
        for keys in stage.graph.all_keys(batch):
            changed += stage.relink(keys).changes_published
            progress.advance(task, len(keys))
    stage.producer.close()
    console.print(f"relinked with {settings.linkage_parameters_in_use}; {changed:,} shared records changed")


@app.command("rebuild-index")
def rebuild_index(yes: bool = typer.Option(False, "--yes", help="confirm: the index is rebuilt from Kafka")) -> None:
    """Forget the identity index and shared records in Redis and replay them from Kafka.

    For an index written by an older carebus, or one you no longer trust. Stop the link workers
    first; when they start again they replay carebus.source-events.v1 and the review decisions
    from the beginning. Subscribers then receive records again from version 1.
    """
    from foundation.redis_connection import sync_client
    from streams.index_rebuild import WorkersStillRunning, rebuild

    if not yes:
        console.print("This removes the identity index and shared records from Redis; rerun with --yes.")
        raise typer.Exit(1)
    settings = _settings()
    try:
        removed = rebuild(settings, sync_client(settings))
    except WorkersStillRunning as exc:
        _fail(exc)
    console.print(f"removed {removed:,} index keys; start the link workers to replay the source events")


audit_app = typer.Typer(help="Audit a person's data through the delivery API: who they are in the index, their "
                             "timeline across systems, their record at any moment. Every read is recorded.",
                        no_args_is_help=True)
app.add_typer(audit_app, name="audit")
_NHS = typer.Option("", "--nhs-number", help="find the person by NHS number")
_IDENT = typer.Option("", "--identifier", help="find the person by a local identifier: <identifier system>|<value>")
_PERSON = typer.Option("", "--person", help="a carebus person id")
_WHY = typer.Option(..., "--why", help="the reason for this read (recorded with it)")
_TOKEN = typer.Option("", "--token", envvar="CAREBUS_API_TOKEN", help="an API token with the auditor role")
_URL = typer.Option("", "--url", help="the delivery service (default http://127.0.0.1:CAREBUS_DELIVERY_PORT)")
_OUT = typer.Option(None, "--output", "-o", help="write to this file instead of the terminal")
_FMT = typer.Option("json", "--format", help="json | csv")


def _audit(url: str, token: str, read):  # noqa: ANN001, ANN202 - read: AuditClient -> the answer
    """Run one read through the API; a refusal or an unreachable service exits 1 with its reason."""
    from carebus.audit_client import AuditClient, AuditError

    if not token:
        _fail(ValueError("an API token is needed: --token or CAREBUS_API_TOKEN"))
    try:
        return read(AuditClient(url or f"http://127.0.0.1:{_settings().delivery_port}", token))
    except AuditError as exc:
        _fail(exc)


def _write(text: str, output) -> None:  # noqa: ANN001 - Path | None
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        output.write_text(text)
        console.print(f"written to {output}")


@audit_app.command("find")
def audit_find(nhs_number: str = _NHS, identifier: str = _IDENT, person: str = _PERSON, why: str = _WHY,
               token: str = _TOKEN, url: str = _URL) -> None:
    """Who the person is in the index: person ids and the source records linked to each."""
    found = _audit(url, token, lambda api: api.find(nhs_number, identifier, person, why))
    table = Table("person id", "source records")
    for p in found:
        table.add_row(p["person_id"], "\n".join(p["sources"]))
    console.print(table if found else "no person found")


@audit_app.command("timeline")
def audit_timeline(nhs_number: str = _NHS, identifier: str = _IDENT, person: str = _PERSON, why: str = _WHY,
                   since: str = typer.Option("0", help="from this time (ISO 8601 or epoch ms)"),
                   fmt: str = _FMT, output: Path = _OUT, token: str = _TOKEN, url: str = _URL) -> None:
    """Everything that happened to the person across systems, from the retained log."""
    _write(_audit(url, token, lambda api: api.timelines(nhs_number, identifier, person, why, since, fmt)), output)


@audit_app.command("as-of")
def audit_as_of(at: str = typer.Option(..., "--at", help="the moment (ISO 8601 or epoch ms)"),
                nhs_number: str = _NHS, identifier: str = _IDENT, person: str = _PERSON, why: str = _WHY,
                fmt: str = _FMT, output: Path = _OUT, token: str = _TOKEN, url: str = _URL) -> None:
    """The person's shared record as it stood at a moment: the version subscribers had then."""
    _write(_audit(url, token, lambda api: api.records_as_of(nhs_number, identifier, person, why, at, fmt)), output)


records_app = typer.Typer(help="Read shared records through the delivery API (every read is recorded).",
                          no_args_is_help=True)
app.add_typer(records_app, name="records")


@records_app.command("show")
def records_show(nhs_number: str = _NHS, identifier: str = _IDENT, person: str = _PERSON, why: str = _WHY,
                 as_json: bool = typer.Option(False, "--json", help="the SharedRecord as JSON instead of tables"),
                 token: str = _TOKEN, url: str = _URL) -> None:
    """The person's current shared record: demographics with their sources, then each section."""
    import json

    from carebus.record_view import render

    records = _audit(url, token, lambda api: api.records(nhs_number, identifier, person, why))
    if as_json:
        _write(json.dumps(records, indent=1), None)
        return
    for record in records:
        console.print(render(record))


dead_letters_app = typer.Typer(help="List, show and replay dead letters (connectors, streams, delivery).",
                               no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")
_WHICH = typer.Option("streams", "--topic", help="connectors | streams | delivery")
_FROM = typer.Option("0", "--from", help="epoch ms or ISO time")
_TO = typer.Option("", "--to", help="epoch ms or ISO time (default: now)")


def _when(value: str, default: int) -> int:
    from consumers.change_reader import time_ms

    return time_ms(value) if value else default


def _dead(which: str, since: str, until: str) -> list[dict]:
    from consumers import dead_letter_replay

    if which not in dead_letter_replay.TOPICS:
        console.print(f"[red]--topic must be one of {', '.join(dead_letter_replay.TOPICS)}[/red]")
        raise typer.Exit(2)
    return dead_letter_replay.read(_settings(), which, _when(since, 0), _when(until, now_ms()))


@dead_letters_app.command("list")
def dead_letters_list(which: str = _WHICH, since: str = _FROM, until: str = _TO) -> None:
    """Parked messages with when, where and why (never their content)."""
    from datetime import datetime, timezone

    from consumers.dead_letter_replay import summary

    table = Table("failed at (UTC)", "id", "stage", "code", "reason", "from")
    for dead in _dead(which, since, until):
        s = summary(dead)
        origin = f"{s['original_topic']}:{s['original_partition']}:{s['original_offset']}" if s["original_topic"] else "-"
        table.add_row(datetime.fromtimestamp(s["failed_at"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                      s["dead_letter_id"], s["stage"], s["error_code"], s["reason"], origin)
    console.print(table)


@dead_letters_app.command("show")
def dead_letters_show(dead_letter_id: str, which: str = _WHICH, since: str = _FROM, until: str = _TO) -> None:
    """One parked message, decoded, with its reason. It holds patient data: show it only to those allowed."""
    import json

    from consumers.dead_letter_replay import decoded_payload, summary

    found = [d for d in _dead(which, since, until) if d["dead_letter_id"] == dead_letter_id]
    if not found:
        console.print("[red]no such dead letter[/red] in that topic and time range")
        raise typer.Exit(1)
    console.print_json(json.dumps(summary(found[0])))
    console.print(decoded_payload(found[0]), markup=False, highlight=False)


@dead_letters_app.command("replay")
def dead_letters_replay(which: str = _WHICH, since: str = _FROM, until: str = _TO,
                        only: list[str] = typer.Option([], "--id", help="replay only these dead letter ids"),
                        again: bool = typer.Option(False, help="send again those replayed before")) -> None:
    """Send parked messages back where they came from (see consumers/dead_letter_replay.py)."""
    from collections import Counter

    from consumers.dead_letter_replay import Replayer

    selection = [d for d in _dead(which, since, until) if not only or d["dead_letter_id"] in only]
    replayer = Replayer(_settings(), which)
    counts: Counter = Counter()
    try:
        for dead in selection:
            outcome = replayer.replay(dead, again=again)
            counts[outcome.result] += 1
            if outcome.result != "replayed":
                console.print(f"{outcome.dead_letter_id}: {outcome.result}: {outcome.detail}")
    finally:
        replayer.close()
    console.print(f"{len(selection)} dead letters: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


@app.command("check-schemas")
def check_schemas() -> None:
    """Check every message schema against all earlier versions (FULL_TRANSITIVE)."""
    from schemas import compatibility

    problems = compatibility.check_all()
    for p in problems:
        console.print(f"[red]incompatible[/red] {p}")
    if problems:
        raise typer.Exit(1)
    console.print("all schemas compatible with every earlier version")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
