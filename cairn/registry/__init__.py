"""The OCI Distribution protocol, both sides: pull/push client and registry server.

Not built yet: the pull/push issue brings the client, the registry-serve
issue the server. Nothing here is importable API until then.
"""
