"""typer command groups of the `upquant` CLI, one module per area."""
