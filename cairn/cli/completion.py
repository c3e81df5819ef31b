"""``cairn completion SHELL``: print the shell completion script."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class


@click.command()
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
