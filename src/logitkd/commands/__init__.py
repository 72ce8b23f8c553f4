"""CLI subcommand families (top layer): each module has ``register(subparsers)``."""
