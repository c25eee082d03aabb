"""Indexes for what every submit and dispatch pass asks of the history (issue 26),
and the untagged image of every job there is (the warm daemon's lookup)."""

import builds.models.untagged_image
from django.conf import settings
from django.db import migrations, models


def fill_untagged_images(apps, schema_editor):
    BuildJob = apps.get_model("builds", "BuildJob")
    jobs = BuildJob.objects.filter(untagged_image="").order_by().values_list("pk", "image")
    batch = []
    for pk, image in jobs.iterator(chunk_size=2000):
        batch.append(BuildJob(pk=pk, untagged_image=builds.models.untagged_image.untagged(image)))
        if len(batch) == 2000:
            BuildJob.objects.bulk_update(batch, ["untagged_image"])
            batch = []
    BuildJob.objects.bulk_update(batch, ["untagged_image"])


class Migration(migrations.Migration):
    dependencies = [
        ("builds", "0030_base_image_updates"),
        ("pool", "0007_data_disk"),
        ("teams", "0005_namespace_public"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="buildjob",
            name="untagged_image",
            field=builds.models.untagged_image.UntaggedImageField(blank=True, editable=False, max_length=512),
        ),
        migrations.RunPython(fill_untagged_images, migrations.RunPython.noop, elidable=True),
        migrations.AddIndex(
            model_name="buildjob",
            index=models.Index(fields=["untagged_image", "started_at"], name="job_untagged_image_started"),
        ),
        migrations.AddIndex(
            model_name="buildjob",
            index=models.Index(fields=["team", "dispatched_at"], name="job_team_dispatched"),
        ),
        migrations.AddIndex(
            model_name="buildjob",
            index=models.Index(fields=["team", "created_at"], name="job_team_created"),
        ),
        migrations.AddIndex(
            model_name="buildjob",
            index=models.Index(fields=["team", "status"], name="job_team_status"),
        ),
    ]
