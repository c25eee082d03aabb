from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        # builds/ announces status changes by a signal and knows nothing of this app.
        from builds.signals import job_event
        from notifications import events

        job_event.connect(events.on_job_event, dispatch_uid="notifications.on_job_event")
