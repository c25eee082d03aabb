"""One attempt of a build on its daemon: claim, build, push, attest, record."""
