"""The ``workbench`` command: ``parser`` (flags, defaults read from the dataclasses), ``commands`` (one function
per subcommand), ``output`` (what is printed), ``main`` (exit statuses)."""
