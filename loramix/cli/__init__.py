"""The command line: the Typer app, one thin file per command, shared options and rendering."""
