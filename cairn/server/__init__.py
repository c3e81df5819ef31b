"""``cairn serve``: the inference API over the store, and its scheduler."""
