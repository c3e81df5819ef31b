"""``cairn run`` and ``cairn runtimes``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from cairn.cli.output import say, table
from cairn.cli.server import LOCAL_HELP, Use, connect
from cairn.errors import ConfigError, ModelNotFoundError
from cairn.i18n import Phrase, _, localize
from cairn.sanitize import untrusted

if TYPE_CHECKING:
    pass


@click.command()
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


@click.command()
@click.argument("model")
@click.argument("prompt", required=False)
@click.option(
    "--runtime", "runtime_name", help="Run with this runtime (else CAIRN_RUNTIME, else the best)."
)
@click.option("--verbose", is_flag=True, help="Print load time, prompt and eval counts and rates.")
@click.option("--insecure", is_flag=True, help="Pull a missing model over plain HTTP.")
@click.option(
    "--format", "output_format", type=click.Choice(["json"]), help="Constrain the answer to JSON."
)
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
def run(
    model: str,
    prompt: str | None,
    runtime_name: str | None,
    verbose: bool,
    insecure: bool,
    output_format: str | None,
    parameters: tuple[str, ...],
    long_context: bool,
    raw: bool,
    local: bool,
) -> None:
    """Run MODEL on PROMPT (or standard input), pulling it first if it is missing.

    With no PROMPT on a terminal: an interactive chat (/? for help, /bye to leave).
    Through a running server when one answers at $CAIRN_HOST (see --local).
    """
    from cairn.manifests.models import Models
    from cairn.modelfile import convert_parameter
    from cairn.running import plan
    from cairn.runtime_plugins.prompt import Message, build_prompt
    from cairn.runtime_plugins.runner import Runner

    overrides: dict[str, Any] = {}
    for item in parameters:
        key, _sep, value = item.partition("=")
        converted = convert_parameter(key.strip(), value.strip())
        if key.strip() == "stop":
            overrides.setdefault("stop", []).extend(converted)
        else:
            overrides[key.strip()] = converted
    # A runtime or a context past the trained one cannot be asked of a server's API.
    client = connect(Use.RUN, local or runtime_name is not None or long_context)
    if client is not None:
        from cairn.cli.on_server import run_on_server

        with client:
            run_on_server(client, model, prompt, overrides, output_format, insecure, verbose, raw)
        return
    models = Models.from_environment()
    try:
        models.get(model)
    except ModelNotFoundError:
        _pull(model, insecure)
    if output_format:
        overrides["format"] = output_format
    ready = plan(models, model, overrides, runtime_name, long_context, add_stops=True)
    for warning in ready.warnings:
        say(warning, err=True, label="warning")
    details, info, spec, options = ready.details, ready.runtime, ready.spec, ready.options
    history, chat_template = ready.history, ready.chat_template
    if prompt is None and sys.stdin.isatty():
        from cairn.cli.chat import LocalSession, chat

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

        session = LocalSession(start, details.template, details.system, history, chat_template)
        chat(session, options, describe, raw)
        return
    runner = Runner(info.name, module=info.module)  # it boots while the prompt is prepared
    try:
        if prompt is None:
            prompt = sys.stdin.read()
        text = build_prompt(
            details.template, [Message("user", prompt)], details.system, history, chat_template
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
        _verbose(load_seconds, stats)


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


def _verbose(load_seconds: float, stats: dict[str, Any]) -> None:
    def rate(count: float, seconds: float) -> str:
        return f"{count / seconds:.2f} tokens/s" if seconds > 0 else "-"

    lines = [
        ("load duration", f"{load_seconds:.3f}s"),
        ("prompt eval count", f"{stats.get('prompt_eval_count', 0)} token(s)"),
        ("prompt eval duration", f"{stats.get('prompt_eval_duration', 0):.3f}s"),
        (
            "prompt eval rate",
            rate(stats.get("prompt_eval_count", 0), stats.get("prompt_eval_duration", 0)),
        ),
        ("eval count", f"{stats.get('eval_count', 0)} token(s)"),
        ("eval duration", f"{stats.get('eval_duration', 0):.3f}s"),
        ("eval rate", rate(stats.get("eval_count", 0), stats.get("eval_duration", 0))),
    ]
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
