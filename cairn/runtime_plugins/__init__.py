"""Runtime plugins (pluggy, entry-point group ``cairn.runtimes``) and model runners.

Not built yet: the runtime-plugins issue brings the hookspecs, discovery,
the isolated runner and the built-in llama.cpp plugin.
"""
