from __future__ import annotations

from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "builds"
    verbose_name = "Builds"

    def ready(self) -> None:
        from builds import signals
        from builds.jobs import daemon_usage, multiplatform
        from pool import disk_prune

        # A multi-platform parent follows its children (transitions sends, after commit).
        signals.child_moved.connect(multiplatform.on_child_moved, dispatch_uid="builds.settle_parent")
        # A prune keeps what the daemon's running builds use (the pool knows no builds).
        disk_prune.protect_with(daemon_usage.protected_on)
