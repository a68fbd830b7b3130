"""Metrics (pure numpy), experiment protocols and reports (tables, PNG plots)."""
