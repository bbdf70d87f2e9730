"""Versioned, content-hashed dataset manifests; training and evaluation launch from them. Planned in issue #5;
nothing is implemented here yet."""
