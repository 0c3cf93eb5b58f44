"""``shmipc ls``, ``inspect``, ``rm`` and ``gc``: the commands that look at and clean /dev/shm.

Every string that comes from /dev/shm (a name, a symlink's kind, a module's description) is
escaped with :func:`display_name` and handed to rich as ``Text``, never as markup, so that
nothing in a file name can reach the terminal as a control sequence or a style.
"""

from __future__ import annotations

import json
import pwd
import sys
from typing import Any

import click
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .._names import check_name
from ..errors import ShmipcError
from ..region import SHM_DIR
from . import rates as _rates
from .app import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_NOT_FOUND, Failure, NotFound, app, console
from .describe import describe
from .gc import collect_garbage, remove
from .segments import (
    _SPILL_PREFIX,
    INCOMPLETE,
    INCOMPLETE_NOTE,
    MAGIC,
    NotASegment,
    _describe,
    display_name,
    is_incomplete,
    let_go,
    read_segment,
    scan_users,
)
from .survey import public, rows

__all__ = ["human_bytes", "human_rate"]


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def human_rate(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    if unit == "B":
        return human_bytes(n) + "/s"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}/s"
    return f"{n:.0f}/s"


def _depth(row: dict) -> str:
    if row["depth"] is not None:
        return f"{row['depth']:,}"
    if row["lag"] is not None:
        return f"lag {row['lag']:,}"
    return "-"


def _participants(row: dict) -> str:
    pids = row["participants"]["pids"]
    complete = row["participants"]["complete"]
    if not pids:
        return "0" if complete else "?"
    shown = ",".join(map(str, pids[:3])) + ("..." if len(pids) > 3 else "")
    return f"{len(pids)} ({shown})" + ("" if complete else "+?")


def _creator(row: dict) -> Text:
    pid, alive = row["creator"]["pid"], row["creator"]["alive"]
    if pid is None:
        return Text("-")
    style = {"alive": "green", "dead": "bold red", "unknown": "yellow"}.get(alive or "", "")
    return Text.assemble(f"{pid} ", (alive or "?", style))


def segments_table(found: list[dict], *, title: str | None = None) -> Table:
    """The ``ls`` table of survey rows."""
    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("size", justify="right")
    table.add_column("owner")
    table.add_column("creator")
    table.add_column("users", justify="right")
    table.add_column("depth", justify="right")
    table.add_column("msgs/s", justify="right")
    table.add_column("bytes/s", justify="right")
    table.add_column("note")
    for row in found:
        owner = row["owner"]["user"] or str(row["owner"]["uid"])
        table.add_row(
            Text(display_name(row["name"])),
            Text(row["kind"]),
            human_bytes(row["size"]),
            Text(f"{display_name(owner)} {row['owner']['mode']}"),
            _creator(row),
            _participants(row),
            _depth(row),
            human_rate(row["rates"]["messages_per_s"]),
            human_rate(row["rates"]["bytes_per_s"], "B"),
            Text(display_name(row["note"])),
        )
    return table


# ---- ls --------------------------------------------------------------------------------------


@app.command(
    "ls",
    short_help="List segments: kind, owner, creator, users, depth, rates.",
    epilog="\b\nExamples:\n  shmipc ls\n  shmipc ls --all\n  shmipc ls --json "
    "| jq '.segments[] | select(.creator.alive == \"dead\")'\n\n" + EXIT_CODES_HELP,
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema in docs/cli.md).")
@click.option("--all", "include_all", is_flag=True, help="Also list every other entry in /dev/shm.")
def ls_command(as_json: bool, include_all: bool) -> int:
    """List shmipc's segments: kind, size, owner, creator alive/dead/unknown, the processes
    that map them, depth (queues, rings) or lag (topics), and rates since the last ls."""
    previous = _rates.load()
    found = rows(include_all=include_all, previous=previous)
    _rates.save([r["_sample"] for r in found if r["_sample"] is not None])
    if as_json:
        click.echo(json.dumps({"directory": SHM_DIR, "segments": [public(r) for r in found]},
                              indent=2))  # fmt: skip
        return 0
    out = console()
    if not found:
        out.print(Text(f"no shmipc segments in {SHM_DIR}"))
        return 0
    out.print(segments_table(found))
    if not previous:
        out.print(Text("(rates appear from the second ls on: they are since the last look)"))
    return 0


# ---- inspect ---------------------------------------------------------------------------------


def _name_argument(value: str) -> str:
    try:
        return check_name(value)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None


def _owner(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def inspect_segment(name: str) -> dict[str, Any]:
    """Everything ``shmipc inspect NAME`` shows, as JSON-ready data; NotFound (exit 3) or
    Failure (exit 1) with a clear message when it cannot."""
    shown = display_name(name)
    try:
        st, view = read_segment(name)
    except FileNotFoundError:
        raise NotFound(f"no segment {shown} in {SHM_DIR}") from None
    except PermissionError:
        raise NotFound(f"permission denied: {shown} belongs to another user") from None
    except NotASegment as exc:
        raise Failure(f"cannot inspect {shown}: {exc}") from None
    except OSError as exc:
        raise Failure(f"cannot read {shown}: {exc.strerror or exc}") from None
    users = scan_users()
    out: dict[str, Any] = {
        "name": name,
        "file": {
            "size": st.st_size,
            "uid": st.st_uid,
            "user": _owner(st.st_uid),
            "gid": st.st_gid,
            "mode": f"{st.st_mode & 0o7777:04o}",
            "inode": st.st_ino,
        },
        "participants": {
            "pids": sorted(users.pids.get(name, ())),
            "complete": not users.hidden and not users.invisible,
        },
    }
    try:
        if name.startswith(_SPILL_PREFIX):
            out["kind"] = "spill"
            out["note"] = "one large message of a queue, stored on its own: no header"
            return out
        if is_incomplete(name, st.st_size, bytes(view[: len(MAGIC)])):
            out["kind"] = INCOMPLETE
            out["note"] = (
                f"{INCOMPLETE_NOTE} (shmipc gc removes it once nobody holds it; "
                "shmipc rm removes it now)"
            )
            return out
        try:
            out.update(describe(view, st.st_size))
        except ShmipcError as exc:
            raise Failure(f"cannot inspect {shown}: {exc}") from None
        except Exception as exc:  # a kind module's inspect_segment failing otherwise
            raise Failure(f"cannot inspect {shown}: {type(exc).__name__}: {exc}") from None
        header = out["header"]
        creator = header["creator_pid"]
        info = _describe(name)
        alive = None
        if info is not None and info.creator_pid is not None:
            alive = (
                "unknown"
                if info.creator_alive is None
                else ("alive" if info.creator_alive else "dead")
            )
        out["creator"] = {"pid": creator, "alive": alive}
        return out
    finally:
        let_go(view)


def _leaf(value: Any) -> Text:
    if isinstance(value, bool) or value is None:
        return Text(str(value).lower() if value is not None else "-", style="cyan")
    if isinstance(value, int):
        return Text(str(value), style="cyan")  # ids and positions: copy-pasteable
    if isinstance(value, float):
        return Text(f"{value:.6g}", style="cyan")
    return Text(display_name(str(value)))


def _tree(node: Tree, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            label = display_name(str(key))
            if isinstance(item, list) and not any(isinstance(v, (dict, list)) for v in item):
                shown = Text(", ").join(_leaf(v) for v in item) if item else Text("none")
                node.add(Text.assemble((label, "bold"), ": ", shown))
            elif isinstance(item, (dict, list)) and item:
                _tree(node.add(Text(label, style="bold")), item)
            else:
                node.add(Text.assemble((label, "bold"), ": ", _leaf(item)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, (dict, list)):
                _tree(node.add(Text(f"[{i}]", style="bold")), item)
            else:
                node.add(_leaf(item))
    else:
        node.add(_leaf(value))


#: The order ``inspect`` shows its sections in (the rest follow as the data has them).
_FIRST = ("creator", "codec", "file", "participants", "header")


def _with_identities(data: Any) -> Any:
    """Identity dicts (tid/start/parked/alive) shown on one line."""
    if isinstance(data, dict):
        if set(data) == {"tid", "start", "parked", "alive"}:
            parked = ", parked" if data["parked"] else ""
            return f"thread {data['tid']} (start {data['start']}{parked}): {data['alive']}"
        return {k: _with_identities(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_with_identities(v) for v in data]
    return data


@app.command(
    "inspect",
    short_help="Show one segment in detail (read-only).",
    epilog="\b\nExamples:\n  shmipc inspect shmipc_q_1a2b\n  shmipc inspect /shmipc_q_1a2b "
    "--json\n\n" + EXIT_CODES_HELP,
)
@click.argument("name", callback=lambda ctx, param, v: _name_argument(v))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema in docs/cli.md).")
def inspect_command(name: str, as_json: bool) -> int:
    """Show one segment: header, layout version, capacity, positions, statistics, sleepers,
    quarantines (queues, rings), subscribers and their lag (topics), block classes (block
    pools). Read-only: it copies the bytes (or maps them PROT_READ), never writes, never
    waits and never attaches, so it cannot disturb the segment."""
    data = inspect_segment(name)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return 0
    tree = Tree(Text.assemble((display_name(name), "bold"), f"  ({data.get('kind', '?')})"))
    shown = {k: data[k] for k in _FIRST if k in data}
    shown.update((k, v) for k, v in data.items() if k not in ("name", "kind") and k not in shown)
    _tree(tree, _with_identities(shown))
    console().print(tree)
    return 0


# ---- rm and gc -------------------------------------------------------------------------------


@app.command(
    "rm",
    short_help="Remove shmipc segments by name.",
    epilog="\b\nExamples:\n  shmipc rm shmipc_q_1a2b\n  shmipc rm shmipc_a shmipc_b\n\n"
    "Exit 3 if any NAME was missing (or not permitted), else 1 if any was refused.",
)
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def rm_command(names: tuple[str, ...]) -> int:
    """Remove shmipc segments by name. Refuses anything that is not a shmipc segment (no
    shmipc header, a FIFO, a symlink: never followed). Processes that have a segment mapped
    keep using it; nobody can attach it any more."""
    code = 0
    for result in remove(names):
        shown = display_name(result.name)
        if result.status == "removed":
            click.echo(f"removed {shown}")
            continue
        click.echo(f"cannot remove {shown}: {display_name(result.detail)}", err=True)
        if result.status in ("missing", "denied"):
            code = EXIT_NOT_FOUND
        elif code == 0:
            code = EXIT_FAILURE
    return code


@app.command(
    "gc",
    short_help="List (--yes: remove) segments nobody alive can use.",
    epilog="\b\nExamples:\n  shmipc gc          # dry run: what would go\n  shmipc gc -v"
    "       # and why the others stay\n  shmipc gc --yes    # remove them\n\n" + EXIT_CODES_HELP,
)
@click.option("--yes", is_flag=True, help="Remove them (default: only list).")
@click.option("--dry-run", is_flag=True, help="Only list (the default).")
@click.option("-v", "--verbose", is_flag=True, help="Say why the others are kept.")
@click.argument("names", nargs=-1, metavar="[NAME]...")
def gc_command(yes: bool, dry_run: bool, verbose: bool, names: tuple[str, ...]) -> int:
    """List (with --yes: remove) segments nobody alive can still use: the creator is known
    dead and no process maps or holds them. Whatever cannot be known is kept."""
    if yes and dry_run:
        raise click.UsageError("--yes and --dry-run contradict each other")
    dry = not yes
    report = collect_garbage(dry_run=dry, names=names or None)
    verb = "would remove" if dry else "removed"
    for name in report.removed:
        click.echo(f"{verb} {display_name(name)}")
    if verbose:
        for name, why in report.kept:
            click.echo(f"kept {display_name(name)}: {why}")
    for name, what in report.errors:
        click.echo(f"cannot remove {display_name(name)}: {what}", err=True)
    tail = f", {len(report.errors)} error(s)" if report.errors else ""
    click.echo(f"{verb} {len(report.removed)} segment(s), kept {len(report.kept)}{tail}")
    if dry and report.removed:
        click.echo("(a dry run: pass --yes to remove them)")
    sys.stdout.flush()
    return EXIT_FAILURE if report.errors else 0
