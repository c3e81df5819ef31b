"""cairn: pull, push, manage and run language models from OCI registries."""

import _signal  # type: ignore[import-not-found]  # first, and built in (no enums to build)
import sys as _sys

if (
    _sys.argv
    and _sys.argv[0].rpartition("/")[2] in ("cairn", "-m")
    and _signal.getsignal(_signal.SIGINT) is not _signal.SIG_IGN
):
    # Started as the `cairn` command: a Ctrl-C while it is still importing ends it as the
    # signal ends any program (exit status 130, no traceback); `cli.main` takes Ctrl-C
    # over once there is a command to interrupt. Started with SIGINT ignored (a shell's
    # background job), it stays ignored, as for every program.
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)

__version__ = "0.1.0"

__all__ = ["__version__"]
