from __future__ import annotations

from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "builds"
    verbose_name = "Builds"

    def ready(self) -> None:
        from builds import signals
        from builds.jobs import daemon_usage, multiplatform
        from builds.worker import prepull
        from pool import disk_prune

        # A multi-platform parent follows its children (transitions sends, after commit).
        signals.child_moved.connect(multiplatform.on_child_moved, dispatch_uid="builds.settle_parent")
        # A pushed image warms the other daemons that may build it (after commit, in the pushing worker).
        signals.job_event.connect(prepull.on_job_event, dispatch_uid="builds.prepull")
        # A prune keeps what the daemon's running builds use (the pool knows no builds).
        disk_prune.protect_with(daemon_usage.protected_on)
