"""`manage.py ensureadmin`: the first operator account and its API token, for `make up`.

Creates the superuser only if it does not exist, with a random password written
to a file only root can read; running it again changes nothing.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from audit.log import command_actor, record


class Command(BaseCommand):
    help = "Create the admin account (once) and print its API token."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", required=True, help="where a new password is written (mode 600)")

    def handle(self, *args, username: str, password_file: str, **options):
        users = get_user_model()
        user = users.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = users.objects.create_superuser(username=username, email="", password=password)
            record("create", "user", user, details={"superuser": True}, via=command_actor("ensureadmin"))
            path = Path(password_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(password + "\n")
            self.stdout.write(f"created user {username} with password {password} (also in {path})")
        else:
            self.stdout.write(f"user {username} exists (its first password is in {password_file})")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"API token of {username}: {token.key}")
