"""The hooks a runtime plugin implements (pluggy project name ``cairn``).

A plugin is a module with ``@hookimpl`` functions, registered through the
entry-point group ``cairn.runtimes``; the built-in llama.cpp plugin is
registered the same way as third-party ones.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from cairn.runtime_plugins.runtime import Runtime

hookspec = pluggy.HookspecMarker("cairn")
hookimpl = pluggy.HookimplMarker("cairn")


@hookspec
def register_runtimes(register: Callable[[Runtime], None]) -> None:
    """Register the runtimes this plugin provides: call ``register(runtime)`` for each.

    Called once, when cairn first needs the list of runtimes. Keep it
    cheap: do not import heavy native libraries here; say whether they are
    present in :meth:`Runtime.availability`, and load them in
    :meth:`Runtime.load`, which runs inside the isolated runner process.
    """
