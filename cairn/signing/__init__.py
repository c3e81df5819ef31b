"""Signed models: OpenSSF Model Signing (OMS) bundles, kept beside models as OCI referrers."""

MAX_BUNDLE_SIZE = 16 << 20
"""The largest signature bundle read (the statement lists every file of a model)."""
