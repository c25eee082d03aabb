"""A job's life: submitted, queued in fair share, dispatched, moved through its states, reaped, retained."""
