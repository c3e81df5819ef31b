"""cairn's llama-server runtime plugin."""
