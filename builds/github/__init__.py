"""GitHub: webhooks, pull requests, commit statuses."""
