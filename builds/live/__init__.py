"""Following a build's log live: one subscription per job per process, the WebSocket's frames and pace."""
