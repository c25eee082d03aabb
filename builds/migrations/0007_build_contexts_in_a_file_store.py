# Uploaded build contexts move from a database BLOB to files in the context
# store (STORAGES["contexts"], builds/uploads/store.py): each existing BLOB is
# written to `<job id>.tar` there, one row at a time, and the column dropped.

import django.utils.timezone
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import migrations, models


def blobs_to_files(apps, schema_editor):
    BuildContext = apps.get_model("builds", "BuildContext")
    store = storages["contexts"]
    for pk in BuildContext.objects.filter(data__isnull=False).values_list("pk", flat=True).iterator():
        data = bytes(BuildContext.objects.filter(pk=pk).values_list("data", flat=True).get())
        name = store.save(f"{pk}.tar", ContentFile(data))
        BuildContext.objects.filter(pk=pk).update(name=name, size=len(data), data=None)


def files_to_blobs(apps, schema_editor):
    BuildContext = apps.get_model("builds", "BuildContext")
    store = storages["contexts"]
    for pk, name in BuildContext.objects.filter(pruned_at__isnull=True).values_list("pk", "name").iterator():
        if name and store.exists(name):
            with store.open(name, "rb") as file:
                BuildContext.objects.filter(pk=pk).update(data=file.read())
    BuildContext.objects.filter(data__isnull=True).delete()  # pruned: nothing to put back


class Migration(migrations.Migration):
    dependencies = [
        ("builds", "0006_containment"),
    ]

    operations = [
        migrations.AlterField(model_name="buildcontext", name="data", field=models.BinaryField(null=True)),
        migrations.AddField(
            model_name="buildcontext",
            name="name",
            field=models.CharField(
                default="", help_text="Its file in the context store (STORAGES['contexts']).", max_length=255
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="buildcontext",
            name="size",
            field=models.PositiveBigIntegerField(default=0, help_text="Bytes of the checked tar."),
        ),
        migrations.AddField(
            model_name="buildcontext",
            name="members",
            field=models.PositiveIntegerField(default=0, help_text="Files, directories and links in it."),
        ),
        migrations.AddField(
            model_name="buildcontext",
            name="created_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AddField(
            model_name="buildcontext",
            name="pruned_at",
            field=models.DateTimeField(blank=True, help_text="When its file was deleted.", null=True),
        ),
        migrations.RunPython(blobs_to_files, files_to_blobs),
        migrations.RemoveField(model_name="buildcontext", name="data"),
    ]
