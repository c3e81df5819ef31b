"""Signed models: OpenSSF Model Signing (OMS) bundles, kept beside models as OCI referrers."""
