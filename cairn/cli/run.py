"""``cairn run`` and ``cairn runtimes``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cairn.cli import examples
from cairn.cli.completion import complete_model
from cairn.cli.output import say, table
from cairn.cli.server import LOCAL_HELP, Use, connect
from cairn.errors import ConfigError, ModelNotFoundError, RuntimeUnavailableError
from cairn.i18n import Phrase, _, localize
from cairn.sanitize import untrusted

if TYPE_CHECKING:
    from collections.abc import Callable

    from cairn.cli.chat import ChatState, Session
    from cairn.manifests.models import Models
    from cairn.running import Plan


@click.command(epilog=examples.RUNTIMES)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def runtimes(as_json: bool) -> None:
    """List the installed runtimes: devices, formats, availability (and why not)."""
    from cairn.runtime_plugins.manager import plugins

    found = plugins().runtimes()
    broken = plugins().broken
    if as_json:
        click.echo(
            json.dumps(
                {
                    "runtimes": [
                        {
                            "name": i.name,
                            "plugin": i.plugin,
                            "devices": list(i.availability.devices or i.runtime.devices),
                            "formats": list(i.runtime.formats),
                            "available": i.availability.available,
                            "reason": i.availability.reason or None,
                        }
                        for i in found
                    ],
                    "broken_plugins": [{"name": b.name, "error": b.error} for b in broken],
                },
                indent=2,
            )
        )
        return
    rows = [
        (
            i.name,
            i.plugin,
            ",".join(i.availability.devices or i.runtime.devices),
            ",".join(i.runtime.formats),
            _("yes")
            if i.availability.available
            else localize(Phrase("no: {reason}", reason=i.availability.reason)),
        )
        for i in found
    ]
    rows += [
        (
            b.name,
            b.name,
            "-",
            "-",
            localize(Phrase("plugin failed to load: {error}", error=b.error)),
        )
        for b in broken
    ]
    headers = (_("NAME"), _("PLUGIN"), _("DEVICES"), _("FORMATS"), _("AVAILABLE"))
    click.echo(table(headers, rows))


THINK_VALUES = ("true", "false", "high", "medium", "low", "max")


class _RunCommand(click.Command):
    """``--think`` alone, or ``--think=LEVEL`` as Ollama takes it (the value attached, so
    that ``--think MODEL`` never takes the model's name for a level)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = []
        for arg in args:
            if arg.startswith("--think="):
                ctx.meta["cairn.think"] = arg.partition("=")[2]
                arg = "--think"
            given.append(arg)
        return super().parse_args(ctx, given)


@click.command(cls=_RunCommand, epilog=examples.RUN)
@click.argument("model", shell_complete=complete_model)
@click.argument("prompt", nargs=-1)
@click.option(
    "--runtime",
    "runtime_name",
    metavar="NAME",
    help="Run with this runtime (else CAIRN_RUNTIME, else the best).",
)
@click.option("--verbose", is_flag=True, help="Print timings after the answer, as Ollama does.")
@click.option("--insecure", is_flag=True, help="Pull a missing model over plain HTTP.")
@click.option(
    "--format",
    "output_format",
    metavar="json|SCHEMA",
    help="Constrain the answer to JSON, or to a JSON schema (inline, or a file holding it).",
)
@click.option(
    "--keepalive",
    metavar="DURATION",
    help="How long a server keeps the model loaded (5m, 1h30m, 0; Go's duration syntax).",
)
@click.option("--nowordwrap", is_flag=True, help="Do not wrap the chat's answers at words.")
@click.option("--think", is_flag=True, help="Let a thinking model think (--think=high|...).")
@click.option("--hidethinking", is_flag=True, help="Hide a thinking model's thinking.")
@click.option(
    "-p",
    "--parameter",
    "parameters",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a model parameter (temperature=0, num_predict=64, ...).",
)
@click.option(
    "--long-context",
    is_flag=True,
    help="Allow num_ctx beyond the context length the model was trained for.",
)
@click.option(
    "--raw",
    is_flag=True,
    help="Print the answer exactly as generated, escape sequences and all.",
)
@click.option("--local", is_flag=True, help=LOCAL_HELP)
@click.pass_context
def run(
    ctx: click.Context,
    model: str,
    prompt: tuple[str, ...],
    runtime_name: str | None,
    verbose: bool,
    insecure: bool,
    output_format: str | None,
    keepalive: str | None,
    nowordwrap: bool,
    think: bool,
    hidethinking: bool,
    parameters: tuple[str, ...],
    long_context: bool,
    raw: bool,
    local: bool,
) -> None:
    """Run MODEL on PROMPT (the words after it, after piped input), pulling it if missing.

    With no PROMPT on a terminal: an interactive chat (/? for help, /bye to leave).
    Through a running server when one answers at $CAIRN_HOST (see --local).
    """
    from cairn.manifests.models import Models
    from cairn.modelfile import convert_parameter
    from cairn.running import plan
    from cairn.runtime_plugins.prompt import Message, build_prompt
    from cairn.runtime_plugins.runner import Runner

    started_at = time.monotonic()
    thinking = _think_level(ctx.meta.get("cairn.think"), think)
    if keepalive is not None:
        _check_duration(keepalive)
    schema = _output_format(output_format)
    overrides: dict[str, Any] = {}
    for item in parameters:
        key, _sep, value = item.partition("=")
        converted = convert_parameter(key.strip(), value.strip())
        if key.strip() == "stop":
            overrides.setdefault("stop", []).extend(converted)
        else:
            overrides[key.strip()] = converted
    _check_runtime(runtime_name)  # before anything is pulled or asked of a server
    text_in = " ".join(prompt) if prompt else None
    if not sys.stdin.isatty():  # piped: it goes before the words, as Ollama joins them
        piped = sys.stdin.read()
        text_in = " ".join([piped, *prompt]) if piped else text_in
        if not (text_in or "").strip():
            raise ConfigError("the prompt is empty: give it after the model's name, or pipe it in")
    # A runtime or a context past the trained one cannot be asked of a server's API.
    client = connect(Use.RUN, local or runtime_name is not None or long_context)
    if client is not None:
        from cairn.cli.on_server import run_on_server

        with client:
            run_on_server(
                client,
                model,
                text_in,
                overrides,
                schema,
                insecure,
                verbose,
                raw,
                keep_alive=keepalive,
                wrap=not nowordwrap,
            )
        return
    models = Models.from_environment()
    try:
        models.get(model)
    except ModelNotFoundError:
        models.refuse_typo(model)  # gemma3:207m beside gemma3:270m: asked, not pulled
        _pull(model, insecure)
    if schema is not None:
        overrides["format"] = schema
    ready = plan(models, model, overrides, runtime_name, long_context, add_stops=True)
    for warning in ready.warnings:
        say(warning, err=True, label="warning")
    if thinking or hidethinking:
        _warn_thinking(ready, "--think" if thinking else "--hidethinking")
    details, info, spec, options = ready.details, ready.runtime, ready.spec, ready.options
    if text_in is None:
        from cairn.cli.chat import chat

        commands = _LocalModel(models, ready.name, runtime_name, long_context)
        session, options, describe = commands.session(ready)
        chat(
            session,
            options,
            describe,
            raw,
            model=commands,
            system=details.system,
            verbose=verbose,
            wrap=not nowordwrap,
        )
        return
    runner = Runner(info.name, module=info.module)  # it boots while the prompt is prepared
    try:
        text = build_prompt(
            details.template,
            [Message("user", text_in)],
            details.system,
            ready.history,
            ready.chat_template,
        )
        load_seconds = runner.load(spec, options)
        stats: dict[str, Any] = {}
        for chunk in runner.generate(text, options):
            if chunk.done:
                stats = dict(chunk.stats)
            else:
                _write(chunk.text if raw else untrusted(chunk.text, multiline=True))
        click.echo()
    except KeyboardInterrupt:
        runner.stop()
        click.echo()
        raise
    except BaseException:
        runner.stop()
        raise
    runner.close()
    if verbose:
        stats.setdefault("total_duration", time.monotonic() - started_at)
        _verbose(load_seconds, stats)


class _LocalModel:
    """The chat's ``/show info``, ``/show modelfile``, ``/save`` and ``/load``, on the store
    here."""

    def __init__(
        self, models: Models, name: str, runtime_name: str | None, long_context: bool
    ) -> None:
        self.models = models
        self.name = name
        self.runtime_name = runtime_name
        self.long_context = long_context
        self.ready: Plan | None = None

    def session(self, ready: Plan) -> tuple[Session, dict[str, Any], Callable[[], str]]:
        from cairn.cli.chat import LocalSession
        from cairn.runtime_plugins.runner import Runner

        self.ready = ready
        info, spec, options, details = ready.runtime, ready.spec, ready.options, ready.details

        def start() -> Runner:
            started = Runner(info.name, module=info.module)
            try:
                started.load(spec, options)
            except BaseException:  # Ctrl-C while it loads: no runner outlives the chat
                started.stop()
                raise
            return started

        def describe() -> str:
            lines = [f"  {k}: {v}" for k, v in sorted(options.items())]
            template = details.template or ""
            return "\n".join([_("Parameters:"), *lines, _("Template:"), template])

        session = LocalSession(
            start, details.template, details.system, ready.history, ready.chat_template
        )
        return session, options, describe

    def info(self) -> str:
        from cairn.cli.models import _describe

        assert self.ready is not None
        return _describe(self.models, self.ready.details, False)

    def modelfile(self, state: ChatState) -> str:
        from cairn.modelfile import Message as Said
        from cairn.modelfile import render_modelfile

        assert self.ready is not None
        details = self.ready.details
        parameters = {**details.parameters, **state.changed}
        parameters.pop("format", None)
        return render_modelfile(
            self.ready.name,
            template=None,
            system=state.system,
            parameters=parameters,
            messages=[
                *details.messages,
                *(Said(m.role, m.content) for m in state.conversation),
            ],
            strict=True,  # /save: refused rather than a model that says something else
        )

    def save(self, name: str, state: ChatState) -> None:
        from cairn.manifests.create import create_model
        from cairn.modelfile import parse_modelfile

        create_model(self.models, name, parse_modelfile(self.modelfile(state)))

    def load(self, name: str) -> tuple[Session, dict[str, Any], Callable[[], str]]:
        from cairn.running import plan

        ready = plan(self.models, name, {}, self.runtime_name, self.long_context)
        return self.session(ready)


def _think_level(attached: str | None, flag: bool) -> str | None:
    """``--think`` (true), ``--think=LEVEL``, or None when not given (or false)."""
    if attached is None:
        return "true" if flag else None
    if attached not in THINK_VALUES:
        raise click.BadParameter(
            _("{value!r} is not one of {choices}").format(
                value=attached, choices=", ".join(THINK_VALUES)
            ),
            param_hint="'--think'",
        )
    return None if attached == "false" else attached


def _warn_thinking(ready: Plan, flag: str) -> None:
    """A model that cannot think, or a runtime that does not separate its thinking."""
    from cairn.server.shown import capabilities

    if "thinking" not in capabilities(ready.details):
        warning = Phrase("{model} cannot think; {flag} is ignored", model=ready.name, flag=flag)
    else:
        warning = Phrase(
            "the {runtime} runtime does not separate thinking from the answer; {flag} is ignored",
            runtime=ready.runtime.name,
            flag=flag,
        )
    say(warning, err=True, label="warning")


def _check_duration(text: str) -> None:
    """``--keepalive``: Go's ``time.ParseDuration`` syntax, as Ollama reads it."""
    from cairn.durations import go_duration

    if go_duration(text) is None:
        raise ConfigError(
            "--keepalive {value!r} is not a duration (5m, 1h30m, 0, -1s)", value=text[:40]
        )


def _output_format(value: str | None) -> Any:
    """``--format``: ``json``, or a JSON schema given inline or in a file; what
    ``/api/generate`` takes as its ``format``."""
    if not value:
        return None
    if value == "json":
        return "json"
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                "--format {value!r} is not json, a JSON schema, or a file holding one",
                value=value[:200],
            )
        text = path.read_text(encoding="utf-8", errors="replace")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "--format: the JSON schema is not JSON: {reason}", reason=str(exc)
        ) from None
    if not isinstance(schema, dict):
        raise ConfigError("--format: a JSON schema must be an object")
    return schema


def _check_runtime(name: str | None) -> None:
    """The runtime asked for (``--runtime`` or ``CAIRN_RUNTIME``) exists and is available,
    checked before anything is pulled; the error names ``CAIRN_RUNTIME`` if it came from
    there."""
    from cairn.runtime_plugins.manager import plugins

    from_env = name is None and bool(os.environ.get("CAIRN_RUNTIME"))
    if name is None and not from_env:
        return
    try:
        plugins().choose("gguf", name)
    except RuntimeUnavailableError as exc:
        if from_env:
            raise RuntimeUnavailableError("CAIRN_RUNTIME: {error}", error=exc.message) from None
        raise


def _write(text: str) -> None:
    """Stream ``text`` to stdout; an encoding that cannot show it is an error, not mojibake."""
    try:
        # color=True: click would strip some escape sequences on a pipe (and let
        # others through); what is printed was neutralised already, unless --raw.
        click.echo(text, nl=False, color=True)
    except UnicodeEncodeError:
        click.echo()  # the error goes on a line of its own
        raise ConfigError(
            "the output's encoding is {encoding}, not UTF-8, and cannot show the answer;"
            " use a UTF-8 locale (LANG=ko_KR.UTF-8 or LANG=C.UTF-8)",
            encoding=sys.stdout.encoding,
        ) from None
    sys.stdout.flush()


def go_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration.String`` writes it (``1.234567s``, ``12.5ms``,
    ``1m2.5s``), which is how Ollama's ``--verbose`` shows it."""
    ns = round(seconds * 1e9)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns == 0:
        return "0s"

    def fraction(whole: int, part: int, digits: int) -> str:
        tail = f"{part:0{digits}d}".rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{fraction(ns // 1_000, ns % 1_000, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{fraction(ns // 1_000_000, ns % 1_000_000, 6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = fraction(rest // 1_000_000_000, rest % 1_000_000_000, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _verbose(load_seconds: float, stats: dict[str, Any]) -> None:
    """Ollama's timing lines (``api.Metrics.Summary``); a line whose value is zero is left
    out, as there."""

    def rate(count: float, seconds: float) -> str:
        return f"{count / seconds:.2f} tokens/s"

    total = float(stats.get("total_duration", 0.0))
    prompt_count = int(stats.get("prompt_eval_count", 0))
    prompt_seconds = float(stats.get("prompt_eval_duration", 0.0))
    count = int(stats.get("eval_count", 0))
    seconds = float(stats.get("eval_duration", 0.0))
    lines = []
    if total > 0:
        lines.append(("total duration", go_duration(total)))
    if load_seconds > 0:
        lines.append(("load duration", go_duration(load_seconds)))
    if prompt_count > 0:
        lines.append(("prompt eval count", f"{prompt_count} token(s)"))
    if prompt_seconds > 0:
        lines.append(("prompt eval duration", go_duration(prompt_seconds)))
        lines.append(("prompt eval rate", rate(prompt_count, prompt_seconds)))
    if count > 0:
        lines.append(("eval count", f"{count} token(s)"))
    if seconds > 0:
        lines.append(("eval duration", go_duration(seconds)))
        lines.append(("eval rate", rate(count, seconds)))
    if "gpu_layers" in stats and "layers" in stats:
        on = ", ".join(stats.get("gpu_devices") or [])
        offload = f"{stats['gpu_layers']}/{stats['layers']} layers on GPU"
        lines.append(("offload", f"{offload} ({on})" if on else offload))
    for name, value in lines:
        click.echo(f"{name + ':':<22}{value}", err=True)


def _pull(name: str, insecure: bool) -> None:  # into the store here
    import asyncio

    from cairn.cli.progress import Reporter
    from cairn.manifests.models import Models
    from cairn.manifests.reference import parse_reference
    from cairn.registry.clients import make_client
    from cairn.registry.pull import pull

    ref = parse_reference(name)
    reporter = Reporter()

    async def go() -> None:
        async with make_client(ref, insecure) as client:
            await pull(Models.from_environment(), ref, client, reporter)

    try:
        asyncio.run(go())
    finally:
        reporter.close()


COMMANDS = (run, runtimes)
