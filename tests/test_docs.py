"""README.md and docs/ stay true: their command lines parse, their links resolve, their module map is the tree.

Every `s2s ...` line of a ```sh block (pipes, `echo ... |`, continuation
lines, comments, and `torchrun ... -m cli.main CMD`, which is `s2s CMD`) is
run with `--help` through Typer's CliRunner, and every option written on it
must be an option of its command, so that a renamed command or flag fails
here rather than in a reader's shell.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import typer
from helpers import ROOT
from typer.testing import CliRunner

from cli.main import app

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODULE_MAP = ROOT / "docs" / "development.md"
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
# Words that may stand before a command in a shell line: loop bodies, launchers, `sudo`-like prefixes.
LEADING_WORDS = {"do", "then", "else", "time", "srun", "exec", "!"}
SEPARATORS = {"|", "||", "&&", ";", "&", ";;"}
REDIRECTIONS = {">", ">>", "<", "<<", ">&", "<&", ">|", "<>"}


@dataclass(frozen=True)
class CommandLine:
    """One command of a doc's shell block: where it is written, and what it asks of a program."""

    page: Path
    line: int
    words: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced code block of a Markdown text."""
    blocks, language, start, body = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence and language is None:
            language, start, body = fence.group(1).lower(), number + 1, []
        elif fence:
            blocks.append((language, start, body))
            language = None
        elif language is not None:
            body.append(line)
    return blocks


def logical_lines(start: int, lines: list[str]) -> list[tuple[int, str]]:
    """The lines of a shell block with backslash continuations joined, each with its first line's number."""
    joined, pending, first = [], "", start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((first, pending + line))
        pending = ""
    if pending:
        joined.append((first, pending))
    return joined


def shell_words(line: str) -> list[str]:
    """A shell line as words and operators, comments left out."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def simple_commands(words: list[str]) -> list[list[str]]:
    """The words of each command of a pipeline or list, without its redirections."""
    commands, current, skip_next = [], [], False
    for word in words:
        if skip_next:
            skip_next = False
        elif word in SEPARATORS:
            commands.append(current)
            current = []
        elif word in REDIRECTIONS:
            skip_next = True  # the file redirected to or from
        else:
            current.append(word)
    return [command for command in commands + [current] if command]


def s2s_arguments(command: list[str]) -> list[str] | None:
    """The arguments an `s2s` command line passes to the app, or None for another program."""
    while command and (command[0] in LEADING_WORDS or re.fullmatch(r"\w+=.*", command[0])):
        command = command[1:]
    if not command:
        return None
    if command[0] == "s2s" or command[0].endswith("/s2s"):
        return command[1:]
    for i in range(len(command) - 1):  # torchrun ... -m cli.main CMD, python -m cli.main CMD
        if command[i] == "-m" and command[i + 1] == "cli.main":
            return command[i + 2:]
    return None


def make_arguments(command: list[str]) -> list[str] | None:
    """The arguments of a `make` command line, or None for another program."""
    return command[1:] if command[0] == "make" else None


def doc_commands(arguments: Callable[[list[str]], list[str] | None]) -> list[CommandLine]:
    """Every command line of the docs' shell blocks that `arguments` reads as its program's."""
    found = []
    for page in PAGES:
        for language, start, body in fenced_blocks(page.read_text(encoding="utf-8")):
            if language not in SHELL_LANGUAGES:
                continue
            for number, line in logical_lines(start, body):
                for command in simple_commands(shell_words(line)):
                    words = arguments(command)
                    if words is not None:
                        found.append(CommandLine(page, number, tuple(words)))
    return found


S2S_LINES = doc_commands(s2s_arguments)
MAKE_LINES = doc_commands(make_arguments)


# Typer builds click commands (its own copy of click, in recent releases): groups are known by
# their subcommands, options by their kind.
def is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def resolve(words: tuple[str, ...]) -> tuple[Any, list[str], list[str]]:
    """The command the words name, the command path, and the words after it."""
    command = typer.main.get_command(app)
    path, rest = [], list(words)
    while is_group(command) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            break
        command, path, rest = sub, path + [rest.pop(0)], rest
    return command, path, rest


def option_names(command: Any) -> set[str]:
    return {name for param in command.params if param.param_type_name == "option"
            for name in (*param.opts, *param.secondary_opts)}


def written_options(words: list[str]) -> list[str]:
    """The option names among a command's words: `--flag`, `--flag=value`, `-o`; not `-` or a negative number."""
    options = []
    for word in words:
        if word.startswith("-") and word != "-" and not re.fullmatch(r"-[\d.]+(e-?\d+)?", word):
            options.append(word.split("=", 1)[0])
    return options


@pytest.mark.parametrize("doc", S2S_LINES, ids=[doc.where for doc in S2S_LINES])
def test_every_documented_command_line_parses(doc):
    command, path, rest = resolve(doc.words)
    assert path and not is_group(command), f"{doc.where}: `s2s {' '.join(doc.words)}` names no command"
    unknown = [option for option in written_options(rest) if option not in option_names(command)]
    assert not unknown, f"{doc.where}: `s2s {' '.join(path)}` has no option {', '.join(unknown)}"
    result = CliRunner().invoke(app, [*doc.words, "--help"])
    assert result.exit_code == 0, f"{doc.where}: {result.output}"
    assert "Usage:" in result.output


def leaf_commands(command: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if not is_group(command):
        return {path}
    return set().union(*(leaf_commands(sub, path + (name,)) for name, sub in command.commands.items()))


def test_the_readme_tours_every_command():
    readme = {tuple(resolve(doc.words)[1]) for doc in S2S_LINES if doc.page.name == "README.md"}
    missing = leaf_commands(typer.main.get_command(app)) - readme
    assert not missing, f"README.md shows no example of {sorted(' '.join(path) for path in missing)}"


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {target for line in re.findall(r"^([\w .-]+):(?!=)", text, re.MULTILINE) for target in line.split()}


@pytest.mark.parametrize("doc", MAKE_LINES, ids=[doc.where for doc in MAKE_LINES])
def test_every_documented_make_target_exists(doc):
    targets = [word for word in doc.words if not word.startswith("-") and "=" not in word]
    assert targets and set(targets) <= makefile_targets(), f"{doc.where}: make {' '.join(doc.words)}"


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown text's headings: lowercased, punctuation dropped, spaces as hyphens."""
    anchors, seen = set(), {}
    in_block = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
        heading = None if in_block else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image of a page that is not a URL, outside code blocks."""
    links, in_block = [], False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            continue
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                links.append((number, target))
    return links


LINKS = [(page, number, target) for page in PAGES for number, target in relative_links(page)]


@pytest.mark.parametrize("page, number, target", LINKS,
                         ids=[f"{page.relative_to(ROOT)}:{number}" for page, number, _ in LINKS])
def test_every_relative_link_resolves(page, number, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{page.relative_to(ROOT)}:{number}: {target} does not exist"
    if anchor and file.suffix == ".md":
        assert anchor in heading_anchors(file.read_text(encoding="utf-8")), \
            f"{page.relative_to(ROOT)}:{number}: {file.name} has no heading #{anchor}"


def test_the_docs_have_command_lines_and_links_to_check():
    """The extraction itself: a parser that found nothing would pass every test above."""
    assert len(S2S_LINES) >= 40 and len(LINKS) >= 20 and MAKE_LINES
    assert sum(doc.page.name == "scaling.md" for doc in S2S_LINES) >= 3  # its torchrun lines


def test_the_command_line_parser_reads_shell_as_a_shell_does():
    line = ("printf 'a b\\n' | FOO=1 s2s translate -m runs/x --beam 5 -i - > out.txt  # -x is a comment\n")
    assert [s2s_arguments(c) for c in simple_commands(shell_words(line))] == [
        None, ["translate", "-m", "runs/x", "--beam", "5", "-i", "-"]]
    joined = logical_lines(7, ["for n in 0 1; do", "  torchrun --nnodes 2 \\", "    -m cli.main train --run-dir r &",
                               "done; wait"])
    assert joined[1] == (8, "  torchrun --nnodes 2      -m cli.main train --run-dir r &")
    assert [s2s_arguments(c) for c in simple_commands(shell_words(joined[1][1]))] == [
        ["train", "--run-dir", "r"]]
    assert written_options(["-m", "x", "--betas=0.9,0.98", "-", "--alpha", "-0.5"]) == ["-m", "--betas", "--alpha"]


def mapped_modules() -> set[str]:
    """The modules docs/development.md's module map lists: the first column of its tables."""
    return set(re.findall(r"^\| `((?:seq2seq|cli)/[\w/]+\.py)` \|", MODULE_MAP.read_text(encoding="utf-8"),
                          re.MULTILINE))


def test_the_module_map_is_the_tree():
    tree = {path.relative_to(ROOT).as_posix() for package in ("seq2seq", "cli")
            for path in (ROOT / package).rglob("*.py") if path.name != "__init__.py"}
    mapped = mapped_modules()
    assert not tree - mapped, f"docs/development.md's module map lacks {sorted(tree - mapped)}"
    assert not mapped - tree, f"docs/development.md's module map lists modules that do not exist: " \
                              f"{sorted(mapped - tree)}"


# The order docs/development.md gives: a package imports only from those before it; training and
# serving stand side by side; the root modules are below every package.
LAYERS = {"files": 0, "data": 1, "model": 2, "runs": 3, "inspection": 4, "search": 5, "training": 6, "serving": 6}


def seq2seq_imports(path: Path) -> set[str]:
    """The first part below `seq2seq` of every seq2seq module a file imports (lazy imports included)."""
    here = path.relative_to(ROOT / "seq2seq").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[1:] for alias in node.names if alias.name.startswith("seq2seq.")]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[:len(here) - node.level + 1]) + (node.module.split(".") if node.module else [])
            names = [base + [alias.name] for alias in node.names] if not node.module else [base]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seq2seq."):
            names = [node.module.split(".")[1:]]
        else:
            continue
        found.update(name[0] for name in names if name)
    return found


def test_the_packages_import_downwards():
    assert {path.name for path in (ROOT / "seq2seq").iterdir() if path.is_dir() and
            (path / "__init__.py").exists()} == set(LAYERS), "a new package needs its place in LAYERS and the docs"
    wrong = []
    for path in sorted((ROOT / "seq2seq").rglob("*.py")):
        parts = path.relative_to(ROOT / "seq2seq").parts
        package = parts[0] if len(parts) > 1 else None
        for target in seq2seq_imports(path) & set(LAYERS):
            if package is None or (target != package and LAYERS[target] >= LAYERS[package]):
                wrong.append(f"{path.relative_to(ROOT)} imports seq2seq.{target}")
    assert not wrong, wrong
