"""A build's log: written in batches and published, read back, archived."""
