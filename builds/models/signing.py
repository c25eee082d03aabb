"""The farm's and teams' signing keys, and the attestations they signed."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from builds.models.jobs import BuildJob


class SigningKey(models.Model):
    """The farm's ECDSA P-256 key that signs what it pushes (builds/provenance/signing.py):
    its private half encrypted like every stored secret (lib/crypto.py),
    its public half in PEM. One active key per scope; a rotated key is retired,
    never deleted, so images it signed can still be checked."""

    scope = models.CharField(max_length=64, default="farm")
    private_key = models.TextField(editable=False)
    public_key = models.TextField()
    key_id = models.CharField(max_length=64, help_text="SHA-256 of the public key's DER, in hex.")
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["scope"], condition=models.Q(retired_at__isnull=True), name="one_active_signing_key_per_scope"
            )
        ]

    def __str__(self) -> str:
        return f"{self.scope} key {self.key_id[:16]}"


class Attestation(models.Model):
    """A signed in-toto statement about an image a job pushed (its provenance,
    its SBOM), as the DSSE envelope also stored in the registry's `.att` tag."""

    job = models.ForeignKey(BuildJob, on_delete=models.CASCADE, related_name="attestations")
    digest = models.CharField(max_length=80, help_text="The image (manifest or index) the statement is about.")
    predicate_type = models.CharField(max_length=200)
    envelope = models.TextField(help_text="The DSSE envelope, JSON.")
    key_id = models.CharField(max_length=64, help_text="The SigningKey that signed it.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "predicate_type"]

    def __str__(self) -> str:
        return f"{self.predicate_type} of {self.digest}"
