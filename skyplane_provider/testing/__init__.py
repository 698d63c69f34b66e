"""Helpers that run real local stand-ins (store emulators, fault proxies) for tests, the demo and benchmarks."""
