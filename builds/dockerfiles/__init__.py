"""A Dockerfile as the engine reads it: its text, where it is in a context, the images it reads; no models."""
