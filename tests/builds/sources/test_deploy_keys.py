"""Deploy keys: checked by OpenSSH when saved, encrypted at rest and rotated with
the build secrets, write-only in the API and admin (the fingerprint shows), and
the farm's words for a Dockerfile that wants an SSH agent it cannot have.
Cloning with them: tests/builds/sources/test_ssh.py; forwarded to a real BuildKit
build: tests/farm/test_deploy_keys.py."""

from __future__ import annotations

import subprocess

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from rest_framework.test import APIClient

from builds.models import Repository
from builds.sources import deploy_keys
from builds.sources.deploy_keys import DeployKeyError
from lib import crypto
from tests.ssh_server import keygen

REPOSITORY = {
    "full_name": "team/app",
    "clone_url": "git@github.com:team/app.git",
    "webhook_secret": "hook",
    "image": "localhost:5000/team/app",
}


@pytest.fixture
def key(tmp_path):
    private, public = keygen(tmp_path / "deploy")
    printed = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "deploy.pub")], capture_output=True, text=True)
    return {"private": private, "public": public, "fingerprint": printed.stdout.split()[1]}


@pytest.fixture
def api(operator, settings):
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = False
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    return client


def key_body(private: str) -> str:
    """The base64 lines of a private key: what must never show anywhere."""
    return "".join(line for line in private.splitlines() if "-----" not in line)


def test_a_key_openssh_loads_is_taken_with_its_fingerprint_as_ssh_keygen_prints_it(key):
    checked = deploy_keys.check(key["private"])
    assert checked.fingerprint == key["fingerprint"]
    # Pasted from a browser: CRLF line ends, the final newline lost. OpenSSH needs neither.
    pasted = deploy_keys.check(key["private"].replace("\n", "\r\n").strip())
    assert pasted.private == key["private"] and pasted.fingerprint == key["fingerprint"]


def test_an_rsa_key_in_pem_form_is_taken(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(tmp_path / "k")])
    assert deploy_keys.check((tmp_path / "k").read_text()).fingerprint.startswith("SHA256:")


def test_a_key_with_a_passphrase_is_refused_saying_so(tmp_path):
    private, _ = keygen(tmp_path / "locked", passphrase="correct horse")
    with pytest.raises(DeployKeyError, match="protected by a passphrase") as refused:
        deploy_keys.check(private)
    assert key_body(private)[:40] not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("hello", "give the private key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----", "OpenSSH cannot load"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "A" * 20000, "at most 16384 bytes"),
    ],
)
def test_what_openssh_cannot_load_is_refused(text, why):
    with pytest.raises(DeployKeyError, match=why) as refused:
        deploy_keys.check(text)
    assert "bm90IGEga2V5" not in str(refused.value)


def test_a_public_key_is_not_a_deploy_key(key):
    with pytest.raises(DeployKeyError, match="give the private key"):
        deploy_keys.check(key["public"])


def test_githubs_keys_are_the_ones_github_publishes(tmp_path):
    (tmp_path / "known_hosts").write_text(deploy_keys.GITHUB_KNOWN_HOSTS)
    printed = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "known_hosts")], capture_output=True, text=True)
    assert {line.split()[1] for line in printed.stdout.splitlines()} == {
        "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",  # docs.github.com: Ed25519
        "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",  # ECDSA
        "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",  # RSA
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("git.example.com", "line 1 is not 'HOST KEY-TYPE BASE64-KEY'"),
        ("# a comment\ngit.example.com ssh-ed25519 not*base64", "line 2: the key is not base64"),
        (
            "git.example.com ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "not a ssh-rsa",
        ),
    ],
)
def test_a_known_hosts_line_ssh_would_not_read_is_refused(api, text, why):
    refused = api.post("/api/v1/repositories/", {**REPOSITORY, "known_hosts": text}, format="json")
    assert refused.status_code == 400 and why in refused.json()["known_hosts"][0]


def test_the_api_takes_a_key_and_answers_only_its_fingerprint(api, key):
    created = api.post("/api/v1/repositories/", {**REPOSITORY, "deploy_key": key["private"]}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["deploy_key_fingerprint"] == key["fingerprint"]
    assert "deploy_key" not in created.json() and key_body(key["private"]) not in created.content.decode()
    repository = Repository.objects.get(full_name="team/app")
    assert key_body(key["private"])[:20] not in repository.deploy_key  # encrypted at rest
    assert deploy_keys.private_key(repository) == key["private"]
    shown = api.get(f"/api/v1/repositories/{repository.pk}/")
    assert shown.json()["deploy_key_fingerprint"] == key["fingerprint"]
    assert repository.deploy_key not in shown.content.decode() and "PRIVATE KEY" not in shown.content.decode()


def test_an_update_without_the_key_keeps_it_and_an_empty_one_removes_it(api, key):
    created = api.post("/api/v1/repositories/", {**REPOSITORY, "deploy_key": key["private"]}, format="json").json()
    url = f"/api/v1/repositories/{created['id']}/"
    kept = api.patch(url, {"forward_ssh_to_build": True, "image": "localhost:5000/team/other"}, format="json")
    assert kept.json()["deploy_key_fingerprint"] == key["fingerprint"] and kept.json()["forward_ssh_to_build"]
    assert deploy_keys.private_key(Repository.objects.get()) == key["private"]
    removed = api.patch(url, {"deploy_key": ""}, format="json")
    assert removed.json()["deploy_key_fingerprint"] == "" and Repository.objects.get().deploy_key == ""


def test_the_api_refuses_a_key_with_a_passphrase_in_a_400_that_says_why(api, tmp_path):
    private, _ = keygen(tmp_path / "locked", passphrase="pw")
    refused = api.post("/api/v1/repositories/", {**REPOSITORY, "deploy_key": private}, format="json")
    assert refused.status_code == 400 and "passphrase" in refused.json()["deploy_key"][0]
    assert key_body(private)[:40] not in refused.content.decode()
    assert not Repository.objects.exists()


@pytest.mark.parametrize(
    "url", ["ssh://git@github.com/team/app.git", "git@github.com:team/app.git", "ssh://git@git.example.com:2222/a.git"]
)
def test_ssh_clone_urls_are_taken(api, url):
    assert api.post("/api/v1/repositories/", {**REPOSITORY, "clone_url": url}, format="json").status_code == 201


@pytest.mark.parametrize("url", ["git@127.0.0.1:team/app.git", "ssh://git@169.254.169.254/a.git"])
def test_ssh_clone_urls_into_the_farm_are_refused(api, url):
    refused = api.post("/api/v1/repositories/", {**REPOSITORY, "clone_url": url}, format="json")
    assert refused.status_code == 400 and "egress rules" in refused.json()["clone_url"][0]


def admin_form(**fields) -> dict:
    form = {
        **REPOSITORY,
        "dockerfile_path": "Dockerfile",
        "build_args": "{}",
        "network": "filtered",
        "pull_requests": "internal",
    }
    form.update({"rules-TOTAL_FORMS": "0", "rules-INITIAL_FORMS": "0"})
    form.update({"secrets-TOTAL_FORMS": "0", "secrets-INITIAL_FORMS": "0"})
    return {**form, **fields}


def test_admin_takes_a_key_never_shows_it_and_keeps_it_when_left_empty(client, operator, key):
    client.force_login(operator)
    added = client.post("/admin/builds/repository/add/", admin_form(new_deploy_key=key["private"]))
    assert added.status_code == 302, added.content.decode()[:3000]
    repository = Repository.objects.get()
    assert repository.deploy_key_fingerprint == key["fingerprint"]
    page = client.get(f"/admin/builds/repository/{repository.pk}/change/").content.decode()
    assert key["fingerprint"] in page
    assert key_body(key["private"])[:20] not in page and repository.deploy_key not in page
    client.post(f"/admin/builds/repository/{repository.pk}/change/", admin_form(new_deploy_key="", webhook_secret=""))
    assert deploy_keys.private_key(Repository.objects.get()) == key["private"]
    client.post(f"/admin/builds/repository/{repository.pk}/change/", admin_form(remove_deploy_key="on"))
    assert Repository.objects.get().deploy_key == ""


def test_admin_refuses_a_key_it_cannot_load_without_echoing_it(client, operator, tmp_path):
    client.force_login(operator)
    private, _ = keygen(tmp_path / "locked", passphrase="pw")
    page = client.post("/admin/builds/repository/add/", admin_form(new_deploy_key=private)).content.decode()
    assert "protected by a passphrase" in page and key_body(private)[:20] not in page
    assert not Repository.objects.exists()


def test_deploy_keys_are_rotated_with_the_build_secrets(db, settings, key):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.GENERATOR_SECRETS_KEYS = [old]
    repository = Repository(**REPOSITORY)
    deploy_keys.assign(repository, deploy_keys.check(key["private"]))
    repository.save()
    settings.GENERATOR_SECRETS_KEYS = [new, old]
    call_command("rotatesecrets")
    settings.GENERATOR_SECRETS_KEYS = [new]
    assert deploy_keys.private_key(Repository.objects.get()) == key["private"]
    settings.GENERATOR_SECRETS_KEYS = [old]
    with pytest.raises(crypto.SecretError):
        deploy_keys.private_key(Repository.objects.get())


SSH_STEP = "FROM busybox\nRUN --mount=type=ssh ssh-add -l\n"


def test_an_ssh_mount_without_a_forwarded_key_is_refused_naming_the_setting(db):
    with_key = Repository(full_name="team/app", deploy_key="stored")
    assert "turn on forward_ssh_to_build" in deploy_keys.ssh_mount_refusal(SSH_STEP, with_key, forwarded=False)
    assert "has no deploy key" in deploy_keys.ssh_mount_refusal(SSH_STEP, Repository(full_name="t/a"), forwarded=False)
    assert "registered repository" in deploy_keys.ssh_mount_refusal(SSH_STEP, None, forwarded=False)
    assert deploy_keys.ssh_mount_refusal(SSH_STEP, with_key, forwarded=True) is None


def test_an_optional_ssh_mount_or_none_at_all_is_left_to_buildkit(db):
    optional = "FROM busybox\nRUN --mount=type=ssh,required=false true\n"
    assert deploy_keys.ssh_mount_refusal(optional, None, forwarded=False) is None
    assert (
        deploy_keys.ssh_mount_refusal("FROM busybox\nRUN --mount=type=cache,target=/c true\n", None, forwarded=False)
        is None
    )


def test_an_ssh_mount_with_another_id_is_refused_when_the_key_is_forwarded_as_default(db):
    named = "FROM busybox\nRUN --mount=type=ssh,id=github true\n"
    assert "forwarded as the default id" in deploy_keys.ssh_mount_refusal(named, None, forwarded=True)
    default = "FROM busybox\nRUN --mount=type=ssh,id=default true\n"
    assert deploy_keys.ssh_mount_refusal(default, None, forwarded=True) is None


def test_ssh_mounts_are_read_as_buildkits_parser_reads_them(db):
    upper = "FROM busybox\nRUN \\\n  --mount=TYPE=SSH,ID=default true\n"
    assert "asks for an SSH agent" in deploy_keys.ssh_mount_refusal(upper, None, forwarded=False)
    behind_a_carriage_return = "FROM busybox\r\nRUN echo a \\\r\n\r\n  && true\rRUN --mount=type=ssh true\n"
    assert deploy_keys.ssh_mount_refusal(behind_a_carriage_return, None, forwarded=False) is None  # one RUN's args
    in_a_comment = "FROM busybox\n# RUN --mount=type=ssh true\nRUN true\n"
    assert deploy_keys.ssh_mount_refusal(in_a_comment, None, forwarded=False) is None
