"""Registry passwords were stored in clear: encrypted now, as build secrets are (lib/crypto.py)."""

from django.db import migrations, models


def encrypt_passwords(apps, schema_editor):
    from lib.crypto import encrypt

    Registry = apps.get_model("builds", "Registry")
    for registry in Registry.objects.exclude(password="").only("pk", "password"):
        Registry.objects.filter(pk=registry.pk).update(password=encrypt(registry.password))


def decrypt_passwords(apps, schema_editor):
    from lib.crypto import decrypt

    Registry = apps.get_model("builds", "Registry")
    for registry in Registry.objects.exclude(password="").only("pk", "password"):
        Registry.objects.filter(pk=registry.pk).update(password=decrypt(registry.password))


class Migration(migrations.Migration):
    dependencies = [
        ("builds", "0021_multiplatform_builds"),
    ]

    operations = [
        migrations.AlterField(
            model_name="registry",
            name="password",
            field=models.TextField(blank=True, help_text="Encrypted."),
        ),
        migrations.RunPython(encrypt_passwords, decrypt_passwords, elidable=False),
    ]
