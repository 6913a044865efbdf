"""Providers that need no network and no key: the floor every chain ends on."""
