"""The insights page and its charts."""
