"""Path filters of build rules (Cloud Build's includedFiles / ignoredFiles):
the globs, the changed files from GitHub's payload or from git, and the
webhook's answer."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from builds.models import BuildJob, BuildRule
from builds.sources.git import GitSource, SourceError
from builds.triggers import path_filters
from builds.triggers.path_filters import FilterError, check_globs, from_payload, refusal
from tests.builds.github.test_webhooks import deliver, force_push, push_to_existing_branch, register
from tests.gitrepos import Repo, git


def rule(included=(), ignored=()):
    return SimpleNamespace(included=list(included), ignored=list(ignored))


@pytest.mark.parametrize(
    ("path", "globs", "matches"),
    [
        ("docs/a/b/c.md", ["docs/**"], True),
        ("README.md", ["**/*.md"], True),  # ** is zero directories too
        ("src/x/README.md", ["**/*.md"], True),
        ("src/x/README.md", ["*.md"], False),  # * stays inside a directory
        ("src/app.py", ["src/*.py"], True),
        ("src/sub/app.py", ["src/*.py"], False),
        (".github/workflows/ci.yml", [".github/**"], True),
        ("a/.hidden", ["a/*"], True),  # dot files match like any other
        ("web/index.html", ["{web,api}/**"], True),
    ],
)
def test_globs_match_as_cloud_builds_do(path, globs, matches):
    assert (refusal(rule(included=globs), [path]) is None) is matches


def test_a_push_whose_files_are_all_ignored_builds_nothing():
    assert refusal(rule(ignored=["docs/**", "**/*.md"]), ["README.md", "docs/x.txt"]) == (
        "every changed file is ignored (docs/**, **/*.md)"
    )
    assert refusal(rule(ignored=["docs/**"]), ["docs/x.txt", "Dockerfile"]) is None


def test_a_push_with_no_included_file_builds_nothing_and_ignored_wins():
    assert refusal(rule(included=["src/**"]), ["README.md"]) == "no changed file is included (src/**)"
    # Cloud Build: a file must pass both filters; an ignored one is not included.
    assert refusal(rule(included=["src/**"], ignored=["src/**/*.md"]), ["src/a.md"]) is not None
    assert refusal(rule(included=["src/**"], ignored=["**/*.md"]), ["src/a.md", "src/a.py"]) is None


def test_no_filters_or_no_changed_files_build():
    assert refusal(rule(), ["anything"]) is None
    assert refusal(rule(ignored=["**"]), []) is None


@pytest.mark.parametrize(
    ("globs", "why"),
    [
        ("docs/**", "a list of path globs"),
        (["src/[abc"], "a [ is never closed"),
        (["{a,b"], "a { is never closed"),
        (["a}"], "a } is never opened"),
        (["/src/**"], "without a leading /"),
        (["!docs/**"], "no ! negation"),
        (["../x"], "never has a .. in it"),
        ([""], "is not a path glob"),
        ([1], "is not a path glob"),
        (["x" * 201], "longer than 200"),
        (["a"] * 51, "at most 50 globs"),
    ],
)
def test_bad_globs_are_refused_naming_the_problem(globs, why):
    with pytest.raises(FilterError, match=why.replace("[", r"\[").replace("{", r"\{").replace("}", r"\}")):
        check_globs(globs, "ignored")
    check_globs(["src/[a-c]*.py", "{a,b}/**", r"weird\[name"], "included")


def test_the_payloads_commits_give_the_changed_files():
    payload = push_to_existing_branch()
    second = dict(payload["commits"][0], added=["new.txt"], modified=["Dockerfile"], removed=["old.txt"])
    payload["commits"] = [dict(payload["commits"][0], id="1" * 40), second]
    assert from_payload(payload).files == ["Dockerfile", "README.md", "new.txt", "old.txt"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda p: p.update(forced=True), "a forced push"),
        (lambda p: p.update(created=True), "a new branch or tag"),
        (lambda p: p.update(commits=[]), "lists no commits"),
        (lambda p: p.update(commits=p["commits"] * path_filters.GITHUB_COMMITS_CAP), "GitHub's cap"),
        (lambda p: p["commits"][-1].update(id="2" * 40), "do not end at the pushed head"),
        (lambda p: p["commits"][-1].update(added=None), "added is not a list"),
    ],
)
def test_a_payload_that_may_not_hold_every_change_asks_git(change, why):
    payload = copy.deepcopy(push_to_existing_branch())
    change(payload)
    changes = from_payload(payload)
    assert changes.files is None and why in changes.why_not


# --- git, when the payload cannot say -----------------------------------------


@pytest.fixture
def repo(tmp_path):
    return Repo(tmp_path, "filtered")


def test_git_names_the_files_between_two_commits_renames_as_both_sides(repo, tmp_path):
    first = repo.commit({"Dockerfile": "FROM busybox\n", "docs/a.md": "a", "src/old.py": "x"})
    git("mv", "src/old.py", "src/new.py", cwd=repo.work)
    second = repo.commit({"docs/b.md": "b"})
    source = GitSource(repo.url, token="", cache_dir=tmp_path / "cache", allow_local=True, timeout=10)
    assert sorted(source.changed_files(first, second)) == ["docs/b.md", "src/new.py", "src/old.py"]


def test_git_names_a_new_branchs_files_since_it_left_the_default_branch(repo, tmp_path):
    repo.commit({"Dockerfile": "FROM busybox\n"})
    repo.commit({"README.md": "main moves on"})
    git("checkout", "--quiet", "-b", "feature", "HEAD~1", cwd=repo.work)
    head = repo.commit({"docs/guide.md": "g"}, branch="feature")
    source = GitSource(repo.url, token="", cache_dir=tmp_path / "cache", allow_local=True, timeout=10)
    assert source.changed_files("refs/heads/main", head) == ["docs/guide.md"]


def test_git_is_bounded_in_time(repo, tmp_path):
    sha = repo.commit({"a": "1"})
    source = GitSource(repo.url, token="", cache_dir=tmp_path / "cache", allow_local=True, timeout=0.001)
    with pytest.raises(SourceError, match="took longer than"):
        source.changed_files(sha, sha)


# --- the webhook --------------------------------------------------------------


@pytest.fixture
def repository(daemon, allowed_registry):
    repository = register("Codertocat/Hello-World")
    repository.rules.filter(source="branch").update(ignored=["docs/**", "**/*.md"])
    return repository


def test_a_docs_only_push_builds_nothing_and_says_why(client, repository):
    response = deliver(client, push_to_existing_branch())  # its one commit adds README.md
    assert response.status_code == 202
    assert response.json() == {
        "result": "ignored: branch master at 0d1a26e67d8f: every changed file is ignored (docs/**, **/*.md)",
        "jobs": [],
    }
    assert not BuildJob.objects.exists()


def test_a_push_that_changes_more_than_docs_builds(client, repository):
    payload = push_to_existing_branch()
    payload["commits"][0]["modified"] = ["Dockerfile"]
    assert len(deliver(client, payload).json()["jobs"]) == 1


def test_a_forced_push_asks_git_and_filters_on_its_answer(client, repository, settings, tmp_path):
    repo = Repo(tmp_path, "hello")
    before = repo.commit({"Dockerfile": "FROM busybox\n"})
    after = repo.commit({"docs/guide.md": "only docs"})
    repository.clone_url = repo.url
    repository.save()
    settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES = True
    settings.GENERATOR_GIT_CACHE_DIR = tmp_path / "web-git"
    payload = force_push()
    payload.update(before=before, after=after)  # its commits list says README.md: git is asked instead
    response = deliver(client, payload, delivery="docs-only")
    assert response.json()["result"] == (
        f"ignored: branch master at {after[:12]}: every changed file is ignored (docs/**, **/*.md)"
    )
    payload["after"] = repo.commit({"Dockerfile": "FROM busybox\nRUN true\n"})
    result = deliver(client, payload, delivery="docs-and-dockerfile").json()["result"]
    assert result.endswith("(changed files from git (a forced push))")


def test_a_push_git_cannot_answer_for_builds_and_says_why(client, repository):
    payload = force_push()  # the repository's clone URL leads nowhere
    response = deliver(client, payload)
    assert len(response.json()["jobs"]) == 1
    assert "changed files unknown (a forced push; git could not say:" in response.json()["result"]
    assert response.json()["result"].endswith(": building)")


def test_the_api_refuses_a_bad_glob_with_a_400_naming_it(client, operator, repository):
    client.force_login(operator)
    body = {"rules": [{"source": "branch", "pattern": "main", "tags": "latest", "ignored": ["docs/[x"]}]}
    response = client.patch(f"/api/v1/repositories/{repository.pk}/", body, content_type="application/json")
    assert response.status_code == 400
    assert "ignored: 'docs/[x' is not a valid glob: a [ is never closed" in str(response.json())
    ok = {"rules": [{"source": "branch", "pattern": "main", "tags": "latest", "included": ["src/**"]}]}
    answered = client.patch(f"/api/v1/repositories/{repository.pk}/", ok, content_type="application/json").json()
    assert answered["rules"][0]["included"] == ["src/**"] and answered["rules"][0]["ignored"] == []
    assert BuildRule.objects.get(repository=repository).included == ["src/**"]
