"""What the subcommands share before any heavy import: argument checks, output-path checks, progress display.

Everything here needs only the standard library, click and rich, so that ``derive verify --steps abc`` or
``derive gen --out /unwritable`` is refused at once, before torch, scipy or a derivation is started.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator, Sequence

import click

from derive.errors import SpecError

__all__ = [
    "PROBLEM_CHOICES",
    "Choice",
    "Order",
    "WARMUPS",
    "check_output_dir",
    "check_output_file",
    "parse_steps",
    "progress",
    "status",
    "validate_steps",
]

#: test data of ``derive verify --problem``
PROBLEM_CHOICES = ("gaussian", "gmm", "both")
#: how ``derive verify --warmup`` starts a multistep sampler
WARMUPS = ("none", "substep")


def validate_steps(steps: Sequence[int]) -> tuple[int, ...]:
    """Step counts: at least four distinct positive integers (three halvings or more), each dividing the
    largest (the coarse grids are sub-grids of the finest one). Raises :class:`SpecError` otherwise."""
    try:
        values = tuple(int(n) for n in steps)
    except (TypeError, ValueError):
        raise SpecError(f"step counts must be whole numbers, got {steps!r}") from None
    if any(int(n) != n for n in steps):
        raise SpecError(f"step counts must be whole numbers, got {list(steps)}")
    if len(values) < 4:
        raise SpecError(f"need at least 4 step counts to fit an order, got {len(values)}")
    if min(values) < 1:
        raise SpecError("step counts must be positive")
    if len(set(values)) != len(values):
        raise SpecError(f"step counts must be distinct, got {list(values)}")
    top = max(values)
    bad = [n for n in values if top % n]
    if bad:
        raise SpecError(f"every step count must divide the largest ({top}); {bad} do not")
    return tuple(sorted(values))


def parse_steps(text: str) -> tuple[int, ...]:
    """``"8,16,32,64"`` -> ``(8, 16, 32, 64)``; :class:`SpecError` on anything malformed."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() for p in parts):
        raise SpecError(f"--steps must be comma-separated positive integers like 8,16,32,64 (got {text!r})")
    return validate_steps([int(p) for p in parts])


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: pathlib.Path, option: str, *, shown: pathlib.Path | None = None) -> None:
    """Refuse an output folder that cannot be created or written (a file in its place, no write permission)."""
    path = pathlib.Path(path)
    option = f"{option} {shown or path}"
    if path.exists() and not path.is_dir():
        raise SpecError(f"{option}: {path} exists and is not a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise SpecError(f"{option}: {existing} is a file, not a folder")
    try:  # a real write, not os.access: root passes that test on read-only mounts and in /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise SpecError(f"{option}: {existing} is not writable ({error.strerror or error})") from None


def check_output_file(path: pathlib.Path, option: str) -> None:
    """Refuse an output file whose folder cannot be created or written, or that is a folder."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise SpecError(f"{option} {path}: is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise SpecError(f"{option} {path}: is not writable")
    check_output_dir(path.parent, option, shown=path)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator:
    """A progress bar on stderr while a terminal shows it; nothing when stderr is piped or redirected.

    Yields ``tick(label)``, to be called once per finished item.
    """
    console = _stderr_console()
    if not console.is_terminal or total <= 1:
        with status(description, console=console):
            yield lambda label="": None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def tick(label: str = "") -> None:
            bar.update(task, advance=1, description=f"{description} {label}".strip())

        yield tick


@contextlib.contextmanager
def status(description: str, console=None) -> Iterator[None]:
    """A spinner with ``description`` on stderr while a terminal shows it; nothing when it is piped."""
    console = console or _stderr_console()
    if not console.is_terminal:
        yield
        return
    with console.status(description):
        yield


class Choice(click.Choice):
    """``click.Choice`` (the choices are listed in ``--help``) whose refusal names the option's concept, the
    same words in every subcommand: ``unknown family 'x'; choose one of: ersde, vpsde, ...``."""

    def __init__(self, choices, concept: str) -> None:
        super().__init__(tuple(choices))
        self.concept = concept

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        self.fail(f"unknown {self.concept} {value!r}; choose one of: {', '.join(self.choices)}", param, ctx)


class Order(click.ParamType):
    """The multistep order K: a whole number from 1 to ``top``, shown as ``[1-top]`` in ``--help``."""

    name = "order"

    def __init__(self, top: int) -> None:
        self.top = top

    def get_metavar(self, param, ctx=None) -> str:
        return f"[1-{self.top}]"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"order must be a whole number between 1 and {self.top}, got {value!r}", param, ctx)
        if not 1 <= number <= self.top:
            self.fail(f"order must be between 1 and {self.top}, got {number}", param, ctx)
        return number
