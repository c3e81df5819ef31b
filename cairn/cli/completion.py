"""``cairn completion SHELL``: print the shell completion script."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class

from cairn.cli import examples


@click.command(epilog=examples.COMPLETION)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash:  eval "$(cairn completion bash)"     (in ~/.bashrc)
    zsh:   eval "$(cairn completion zsh)"      (in ~/.zshrc)
    fish:  cairn completion fish > ~/.config/fish/completions/cairn.fish
    """
    from cairn.cli import cli
    from cairn.i18n import _

    completion_class = get_completion_class(shell)
    if completion_class is None:  # click knows all three choices
        raise click.UsageError(_("no completion for {shell}").format(shell=shell))
    click.echo(completion_class(cli, {}, "cairn", "_CAIRN_COMPLETE").source())


def complete_model(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The store's model names that begin with what was typed (``shell_complete=``)."""
    from cairn.errors import CairnError
    from cairn.manifests.models import Models

    try:
        found, _problems = Models.from_environment().catalog()
    except (CairnError, OSError):
        return []
    names = sorted({m.reference.display for m in found})
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]
