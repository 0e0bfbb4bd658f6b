"""Fixtures: throw-away network namespaces with unique names, always cleaned up."""
