"""The ``cairn`` command: one click command per verb, thin.

Only here is a :class:`~cairn.errors.CairnError` turned into a message:
``Error: <one line>`` on stderr and exit code 1; ``CAIRN_DEBUG=1`` adds the
traceback.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import click

from cairn import __version__, config
from cairn.cli import examples
from cairn.errors import CairnError


class OneLineUsageError(click.ClickException):
    """A usage error in one line, exit status 2: ``Error: <what>`` and click's "Try 'cairn X
    --help' for help." on the same line, instead of click's usage text above it. A
    suggestion ("Did you mean 'list'?") stands alone: it already says what to type."""

    exit_code = 2

    @classmethod
    def of(cls, exc: click.UsageError) -> OneLineUsageError:
        from cairn.i18n import _  # click's own words too

        message = exc.format_message()
        suggested = getattr(exc, "suggested", False)
        if isinstance(exc, click.NoSuchOption):
            message, suggested = cls._no_such_option(exc)
        if exc.ctx is not None and not suggested:
            hint = _("Try '{command} {option}' for help.").format(
                command=exc.ctx.command_path, option=max(exc.ctx.help_option_names, key=len)
            )
            message = f"{message} {hint}"
        return cls(message)

    @staticmethod
    def _no_such_option(exc: click.NoSuchOption) -> tuple[str, bool]:
        """Click's message, its difflib guesses (``--bogus`` → ``--verbose``) kept only when
        one keystroke off or the option's start, as unknown commands are judged."""
        from cairn.i18n import _
        from cairn.manifests.suggest import one_keystroke

        typed = exc.option_name
        close = [
            option
            for option in exc.possibilities or ()
            if one_keystroke(typed, option) or (len(typed) >= 5 and option.startswith(typed))
        ]
        message = _("No such option {name!r}.").format(name=typed)
        if len(close) == 1:
            return (
                f"{message} {_('Did you mean {possibility}?').format(possibility=close[0])}",
                True,
            )
        if close:
            possible = _("(Possible options: {possibilities})").format(
                possibilities=", ".join(close)
            )
            return f"{message} {possible}", True
        return message, False


class CairnGroup(click.Group):
    """A group that reports cairn's errors as one line and exit code 1 (usage errors: 2)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise OneLineUsageError.of(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise OneLineUsageError.of(exc) from None
        except CairnError as exc:
            if config.load().debug:
                import traceback

                traceback.print_exc()
            from cairn.cli.output import say_error

            say_error(exc)
            ctx.exit(1)
        except KeyboardInterrupt:
            from cairn.cli.output import say

            say("Interrupted", err=True)
            ctx.exit(130)

    ALIASES: ClassVar[dict[str, str]] = {"ls": "list"}
    """Other names of a command, as Ollama's: they work, and ``--help`` lists the command once."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.ALIASES.get(cmd_name, cmd_name))

    SYNONYMS: ClassVar[dict[str, str]] = {
        "delete": "rm",
        "remove": "rm",
        "rmi": "rm",
        "copy": "cp",
        "images": "list",
    }
    """Other tools' words for a command: suggested for, never run as, the command."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        known = name[:1] in ("", "-") or self.get_command(ctx, name) is not None
        if not known and not ctx.resilient_parsing:
            message, suggested = self._no_such(name)
            error = click.exceptions.NoSuchCommand(name, message, ctx=ctx)
            error.suggested = suggested  # type: ignore[attr-defined]
            raise error
        return super().resolve_command(ctx, args)

    def _no_such(self, typed: str) -> tuple[str, bool]:
        """Click's "No such command", with a suggestion only when one is close: a letter
        missing (``lst``, ``pus``), a known command's start (``insp``), another tool's word
        (``delete``), or one keystroke off in a name of four letters or more (``lsit``);
        a two- or three-letter word is never changed into another verb (``rn`` is not ``rm``),
        though its letters may be swapped (``rnu``).
        """
        from cairn.i18n import _
        from cairn.manifests.suggest import one_keystroke

        words = {**{n: n for n in self.commands}, **self.ALIASES, **self.SYNONYMS}
        t = typed.casefold()
        meant = {words[t]} if t in words else set()
        meant |= {c for w, c in words.items() if len(w) == len(t) + 1 and one_keystroke(t, w)}
        meant |= {c for w, c in words.items() if len(t) >= 3 and w.startswith(t)}
        if not meant:
            meant = {
                c
                for w, c in words.items()
                if one_keystroke(t, w)
                and (len(w) < len(t) or len(t) >= 4 or sorted(w) == sorted(t))
            }
        message = _("No such command {name!r}.").format(name=typed)
        if not meant:
            return message, False
        said = ", ".join(repr(m) for m in sorted(meant))
        if len(meant) == 1:
            return f"{message} {_('Did you mean {possibility}?').format(possibility=said)}", True
        hint = _("(Did you mean one of: {possibilities}?)").format(possibilities=said)
        return f"{message} {hint}", True


@click.group(
    cls=CairnGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=examples.CAIRN,
)
@click.version_option(__version__, "--version", "-v", prog_name="cairn")
def cli() -> None:
    """Pull, push, manage and run language models.

    Models live in a content-addressed store in Ollama's layout at
    $CAIRN_MODELS (default ~/.cairn/models).
    """
    if config.load().debug:
        _log_to_stderr()


def _log_to_stderr() -> None:
    """``CAIRN_DEBUG=1``: cairn's own debug lines (why a download added streams) on stderr."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cairn: %(relativeCreated)d ms: %(name)s: %(message)s"))
    logger = logging.getLogger("cairn")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def _register() -> None:
    from cairn.cli import (
        completion,
        mirror,
        models,
        registry,
        remote,
        run,
        serve,
        server,
        signing,
        sync,
    )

    _localize_click()
    commands = (
        *models.COMMANDS,
        *signing.COMMANDS,
        *registry.COMMANDS,
        *remote.COMMANDS,
        *mirror.COMMANDS,
        *sync.COMMANDS,
        *run.COMMANDS,
        *server.COMMANDS,
    )
    for command in (*commands, completion.completion):
        cli.add_command(command)
    cli.add_command(serve.registry)
    cli.add_command(serve.serve_api)
    _translate(cli)


CLICK_MODULES = ("core", "decorators", "exceptions", "formatting", "parser", "termui", "types")


def _localize_click() -> None:
    """Click's own words (``Usage:``, ``Options``, its usage errors) in the user's language.

    Click looks them up through the ``_`` and ``ngettext`` that each of its
    modules imports from :mod:`gettext`; here those names are pointed at
    cairn's catalog, which carries click's strings too. Korean has no
    plural forms, so ``ngettext`` only picks the English form to look up.
    """
    import importlib

    from cairn.i18n import _, language

    if language() == "en":
        return

    def ngettext(singular: str, plural: str, count: int) -> str:
        return _(singular if count == 1 else plural)

    for name in CLICK_MODULES:
        module = importlib.import_module(f"click.{name}")
        if hasattr(module, "_"):
            module._ = _  # type: ignore[attr-defined]
        if hasattr(module, "ngettext"):
            module.ngettext = ngettext  # type: ignore[attr-defined]


def _translate(command: click.Command) -> None:
    """Help texts and examples (epilogs) in the user's language, for every command and option
    (English is the source).

    ``--help``'s own text comes from click at run time, through its gettext hook.
    """
    from cairn.i18n import _, language

    if language() == "en":
        return
    if command.help:
        command.help = _(command.help)
    if command.epilog:
        command.epilog = _(command.epilog)
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            param.help = _(text)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _translate(sub)


_register()


def _interrupted(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a Ctrl-C, or was caused by one: Python wraps a KeyboardInterrupt
    raised while a class is being built (``__set_name__``, during a lazy import) in a
    RuntimeError."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def main() -> None:
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job ignores it
        signal.signal(signal.SIGINT, signal.default_int_handler)  # see cairn/__init__.py
    try:
        # Not click's standalone mode: it answers a Ctrl-C outside a command (while the
        # arguments are parsed, say) with "Aborted!" and exit status 1.
        code = cli.main(prog_name="cairn", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        from cairn.cli.output import say

        say("Interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
