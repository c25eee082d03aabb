"""Figures kept as jobs end, and /metrics."""
