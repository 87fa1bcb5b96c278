"""One module per ``safeloader`` subcommand; each exposes ``add_parser`` and sets ``run`` as the handler."""
