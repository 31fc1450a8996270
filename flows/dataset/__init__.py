"""A dataset version on disk: the store that publishes it and every reader of it."""
