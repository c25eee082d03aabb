"""Secrets in the admin: never shown, kept when left empty, stored encrypted when typed in.

Every app's admin asks for secrets (repositories' tokens, registries' and teams'
passwords, endpoints' secrets): one way, here, below them all.
"""

from __future__ import annotations

from django import forms

from lib import crypto


class SecretInput(forms.PasswordInput):
    """Write-only: the page never shows a stored secret; left empty, it is kept."""

    def __init__(self):
        super().__init__(render_value=False, attrs={"autocomplete": "new-password"})


class SecretTextarea(forms.Textarea):
    """A multi-line secret (a private key): the page never shows what is stored."""

    def format_value(self, value):
        return None


def keep_stored_secrets(form: forms.ModelForm, data: dict, names: tuple[str, ...]) -> dict:
    """A secret left empty on an existing row keeps its stored value."""
    if form.instance.pk:
        stored = type(form.instance).objects.get(pk=form.instance.pk)
        for name in names:
            if not data.get(name):
                data[name] = getattr(stored, name)
    return data


def keep_or_encrypt(form: forms.ModelForm, data: dict, name: str) -> dict:
    """A secret typed in is stored encrypted (lib/crypto.py); left empty on an
    existing row, the stored one is kept."""
    typed = data.get(name)
    data = keep_stored_secrets(form, data, (name,))
    if typed:
        data[name] = crypto.encrypt(typed)
    return data
