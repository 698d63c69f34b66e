"""skyplane_provider."""
