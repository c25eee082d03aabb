"""The engines a build runs on: Docker's API, BuildKit through Docker's CLI, the build's cgroup; no models."""
