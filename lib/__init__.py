"""The ground floor: what every app shares and none owns; no models, no app (docs/architecture.md, The map)."""
