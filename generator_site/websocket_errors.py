"""The answer to a WebSocket handshake for a path the farm has no consumer for."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

NOT_FOUND = 4404  # the same close code as the log consumer's "no such job"


class NoSuchPath(AsyncJsonWebsocketConsumer):
    """Accepts, says why in an error frame, closes with 4404: the client reads a
    reason instead of a refused handshake, and the log has no traceback (Channels'
    router raises ValueError for a path it has no route for)."""

    async def connect(self) -> None:
        await self.accept()
        await self.send_json({"type": "error", "message": f"no WebSocket at {self.scope['path']}"})
        await self.close(code=NOT_FOUND)
