"""The root `loramix` app: global options, command registration and the one error boundary.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import traceback
from typing import Optional

import typer
from typer.core import TyperGroup

from loramix import __version__
from loramix.cli import data, demo, export, fit_cat, inspect, merge, train_skill
from loramix.cli import eval as eval_command
from loramix.core.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, InputError, LoramixError

# the commands that share their work among the processes of torchrun / accelerate launch
DATA_PARALLEL = ("train-skill", "fit-cat", "eval")


class LoramixGroup(TyperGroup):
    """Catches every failure of a command once and turns it into a message and an exit code."""

    def invoke(self, ctx):
        from loramix.cli.render import console

        try:
            return super().invoke(ctx)
        except LoramixError as e:
            _debug_traceback(ctx)
            console.error(e.message, e.hint)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            console.error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `loramix ... | head`: the reader left; nothing to tell anyone
            import os
            import sys

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise typer.Exit(EXIT_RUNTIME)
        except OSError as e:
            _debug_traceback(ctx)
            where = f"{e.filename}: " if e.filename else ""
            console.error(f"{where}{e.strerror or e}", "check the path, its permissions and the free disk space")
            raise typer.Exit(EXIT_RUNTIME)
        except MemoryError:
            _debug_traceback(ctx)
            console.error("out of memory", "merge fewer or smaller adapters at a time, or use a larger machine")
            raise typer.Exit(EXIT_RUNTIME)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:
            if hasattr(e, "exit_code") and hasattr(e, "show"):  # usage errors: typer prints them, exit 2
                _suggest(e)
                raise
            _debug_traceback(ctx)
            console.error(f"unexpected {type(e).__name__}: {e}", "run with --debug for the traceback")
            raise typer.Exit(EXIT_RUNTIME)


def _suggest(error) -> None:
    """A choice given wrong gets the nearest valid value: "'tie' is not one of ...: did you mean 'ties'?"."""
    import difflib
    import re

    message = getattr(error, "message", None)
    found = re.search(r"'([^']*)' is not one of (.*)\.$", message or "")
    if message is None or not found:
        return
    choices = re.findall(r"'([^']*)'", found.group(2))
    close = difflib.get_close_matches(found.group(1).casefold(), choices, n=1, cutoff=0.6)
    error.message = message.removeprefix("Value error, ") + (f" Did you mean '{close[0]}'?" if close else "")


def _debug_traceback(ctx) -> None:
    if (ctx.obj or {}).get("debug"):
        from loramix.cli.render import console

        console.stderr().print(traceback.format_exc(), markup=False, highlight=False)


app = typer.Typer(
    cls=LoramixGroup,
    name="loramix",
    help="Compose skills in language models by merging LoRA adapters.\n\n"
    "Example: loramix merge math/ code/ -m ties --density 0.2 -o merged/",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"loramix {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails."),
) -> None:
    """Compose skills in language models by merging LoRA adapters."""
    from loramix.cli.render import console
    from loramix.core import dist

    ctx.obj = {"debug": debug}
    console.install_log_handler()  # the library's warnings and notes, printed on stderr
    if dist.world() > 1 and ctx.invoked_subcommand not in DATA_PARALLEL:
        raise InputError(
            f"{ctx.invoked_subcommand} runs in one process, not under torchrun or accelerate launch "
            f"(WORLD_SIZE={dist.world()})",
            hint=f"run it without the launcher; {', '.join(DATA_PARALLEL)} use several processes",
        )


app.command("train-skill", no_args_is_help=True)(train_skill.train_skill)
app.command("fit-cat", no_args_is_help=True)(fit_cat.fit_cat)
app.command("merge", no_args_is_help=True)(merge.merge)
app.command("eval", no_args_is_help=True)(eval_command.eval_models)
app.command("inspect", no_args_is_help=True)(inspect.inspect)
app.command("export-gguf", no_args_is_help=True)(export.export_gguf)
app.command("data")(data.data)
app.command("demo")(demo.demo)


def main() -> None:
    from loramix.core import dist

    try:
        app(prog_name="loramix")
    finally:
        dist.finish()
        _quiet_teardown()


def _quiet_teardown() -> None:
    """After the command, a further Ctrl-C (while Python joins threads and exits) ends the
    process at once with 130 instead of printing a traceback from threading._shutdown."""
    import os
    import signal

    signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
