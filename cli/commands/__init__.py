"""The CLI's commands, one module per area; `cli.main` registers them."""
