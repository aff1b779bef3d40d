"""Native rules, one per module. Each module defines exactly one `Rule` subclass."""
