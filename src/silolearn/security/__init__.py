"""Security: key managers, envelope encryption and capabilities."""
