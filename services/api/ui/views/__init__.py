"""One module per page: each reads through `UiClient` and returns a `Page` for one template."""
