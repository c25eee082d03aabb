"""Where a repository's build context comes from: git mirrors, deploy keys, a push's changed files."""
