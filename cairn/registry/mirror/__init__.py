"""Offline mirroring: OCI layouts and bundles (export, import), and registry sync."""
