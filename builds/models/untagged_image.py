"""A job's image without its tag, kept in a column of its own so that "the last
build of this image repository" (the warm daemon, builds/jobs/dispatch.py) is one
step down an index instead of a `LIKE 'repo:%'` over the farm's whole history."""

from __future__ import annotations

from django.db import models


def untagged(image: str) -> str:
    """`host:port/team/app:tag` -> `host:port/team/app` (a port's colon is not a tag's)."""
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


class UntaggedImageField(models.CharField):
    """Always the row's `image` without its tag, worked out whenever the row is
    written (save and bulk_create both call pre_save), so no caller can forget it."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("max_length", 512)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def pre_save(self, model_instance, add: bool) -> str:
        value = untagged(model_instance.image)
        setattr(model_instance, self.attname, value)
        return value
