"""The registries: the HTTP client, push accounts, the farm's own token server and catalog."""
