"""The shell completion scripts in completions/ are generated from the app and must not go stale.

Expectations are read from the app itself (typer.main.get_command), never copied from the scripts,
so adding a command or an option without regenerating fails here.
"""

from __future__ import annotations

import enum
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import typer.main

from loramix.cli import completions
from loramix.cli.app import app

SCRIPTS = Path(__file__).resolve().parent.parent / "completions"
BASH, ZSH, FISH = (SCRIPTS / completions.FILES[shell] for shell in ("bash", "zsh", "fish"))
REGENERATE = "run `python -m loramix.cli.completions` and commit the result"


def app_tree() -> dict[str, set[str]]:
    """Each visible command of the app -> its long option names (with --help), read from the app."""
    group = typer.main.get_command(app)
    tree = {}
    for name, cmd in group.commands.items():
        if not cmd.hidden:
            names = [
                n
                for p in cmd.params
                if p.param_type_name == "option" and not p.hidden
                for n in p.opts + p.secondary_opts
            ]
            tree[name] = {n for n in names if n.startswith("--")} | {"--help"}
    return tree


def bash_complete(*words: str, cwd: Path | None = None) -> list[str]:
    """What the bash script offers for the command line `words` (the last one being completed)."""
    script = f"""
        source {shlex.quote(str(BASH))}
        spec=$(complete -p loramix) && fn=${{spec#*-F }} && fn=${{fn%% *}}
        COMP_WORDS=({" ".join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}; COMPREPLY=()
        "$fn" && printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    run = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, cwd=cwd)
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if line]


def fish_complete(line: str) -> list[str]:
    script = f"source {shlex.quote(str(FISH))}; complete -C{shlex.quote(line)}"
    run = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return [row.split("\t")[0] for row in run.stdout.splitlines()]


def has_token(text: str, token: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None


# --- staleness ---------------------------------------------------------------------------------


def test_committed_scripts_are_what_the_generator_writes_now():
    texts = completions.generate()
    stale = [
        name
        for name, text in texts.items()
        if not (SCRIPTS / name).is_file() or (SCRIPTS / name).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"completion scripts out of date: {', '.join(stale)}; {REGENERATE}"


def test_check_flag_names_stale_files_writes_nothing_and_passes_once_written(tmp_path, capsys):
    assert completions.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert all(name in err for name in completions.FILES.values()) and "python -m loramix.cli.completions" in err
    assert list(tmp_path.iterdir()) == []
    assert completions.main(["--dir", str(tmp_path)]) == 0
    assert completions.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / completions.FILES["zsh"]).write_text("# edited\n")
    assert completions.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert completions.FILES["zsh"] in err and completions.FILES["bash"] not in err


# --- every command and long option is offered ------------------------------------------------


@pytest.mark.parametrize("script", [BASH, ZSH, FISH], ids=lambda p: p.name)
def test_every_command_and_long_option_is_in_the_script(script):
    text = script.read_text(encoding="utf-8")
    fish = script == FISH
    missing = [name for name in app_tree() if not has_token(text, name)]
    for options in app_tree().values():
        missing += [o for o in options if not has_token(text, f"-l {o[2:]}" if fish else o)]
    assert not missing, f"{script.name} lacks {sorted(set(missing))}; {REGENERATE}"


def test_bash_offers_each_command_its_own_options():
    tree = app_tree()
    assert set(bash_complete("loramix", "")) == set(tree)
    for name, options in tree.items():
        offered = set(bash_complete("loramix", name, "--"))
        assert options <= offered, f"bash: `loramix {name} --` lacks {sorted(options - offered)}; {REGENERATE}"


def test_fish_offers_each_command_its_own_options():
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    tree = app_tree()
    assert set(fish_complete("loramix ")) >= set(tree)
    for name, options in tree.items():
        offered = set(fish_complete(f"loramix {name} --"))
        assert options <= offered, f"fish: `loramix {name} --` lacks {sorted(options - offered)}; {REGENERATE}"


# --- values ------------------------------------------------------------------------------------


def test_bash_offers_the_values_of_choice_options():
    from loramix.evaluate.metrics import METRICS

    assert sorted(bash_complete("loramix", "eval", "--metric", "")) == sorted(METRICS)
    assert sorted(bash_complete("loramix", "fit-cat", "--granularity", "")) == ["global", "layer", "module", "rank"]


def test_bash_offers_the_registered_merge_methods():
    from loramix.merge.methods import REGISTRY

    assert sorted(bash_complete("loramix", "merge", "--method", "")) == sorted(REGISTRY)
    assert sorted(bash_complete("loramix", "merge", "--method", "=", "")) == sorted(REGISTRY)  # --method=<TAB>
    assert set(bash_complete("loramix", "merge", "--method", "da")) == {m for m in REGISTRY if m.startswith("da")}


def test_bash_completes_paths_for_path_options_and_arguments(tmp_path):
    (tmp_path / "math").mkdir()
    (tmp_path / "notes.txt").write_text("")
    assert set(bash_complete("loramix", "merge", "--out", "", cwd=tmp_path)) == {"math", "notes.txt"}
    assert set(bash_complete("loramix", "inspect", "", cwd=tmp_path)) == {"math", "notes.txt"}
    assert bash_complete("loramix", "merge", "--seed", "", cwd=tmp_path) == []  # a number: no files


def test_values_table_names_only_options_the_app_has(monkeypatch):
    for command, table in completions.VALUES.items():
        assert set(table) <= app_tree().get(command, set()), f"VALUES[{command!r}] names a missing option"
    monkeypatch.setitem(completions.VALUES, "merge", {"--no-such-option": ("a",)})
    with pytest.raises(LookupError, match="--no-such-option"):
        completions.generate()


class Color(str, enum.Enum):
    red = "red"
    blue = "blue"


def test_generator_follows_types_of_a_new_app(monkeypatch):
    demo = typer.Typer()

    @demo.command()
    def paint(
        files: list[Path] = typer.Argument(..., help="What to paint."),
        color: Color = typer.Option(Color.red, "--color", "-c", help="Which paint."),
        folder: Path = typer.Option(None, "--folder", dir_okay=True, file_okay=False),
        dry: bool = typer.Option(False, "--dry/--wet"),
    ):
        """Paint things."""

    @demo.command()
    def wash():
        """Wash things."""

    monkeypatch.setattr(completions, "VALUES", {})
    _root, commands = completions.read_app(demo)
    paint_cmd = {c.name: c for c in commands}["paint"]
    opts = {o.names[0]: o for o in paint_cmd.options}
    assert opts["--color"].kind == "choice" and opts["--color"].choices == ("blue", "red")
    assert opts["--folder"].kind == "dir" and opts["--dry"].kind == opts["--wet"].kind == "flag"
    assert paint_cmd.arguments[0].kind == "path" and paint_cmd.arguments[0].many
    fish = completions.generate(demo)[completions.FILES["fish"]]
    assert has_token(fish, "-l wet") and has_token(fish, "wash")


# --- syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell,script", [("bash", BASH), ("zsh", ZSH), ("fish", FISH)], ids=["bash", "zsh", "fish"])
def test_script_parses(shell, script):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    run = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, f"{shell} -n {script.name}: {run.stderr}"
