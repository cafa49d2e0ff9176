"""``python -m trio_cluster.faults cli``: Toxiproxy's ``toxiproxy-cli`` 2.12, verb for verb.

Same commands and aliases (``list``, ``inspect``, ``create``, ``toggle``, ``delete``,
``toxic add|update|remove``), same flags (``--host``/``-h`` or ``$TOXIPROXY_URL``,
``--listen``/``-l``, ``--upstream``/``-u``, ``--toxicName``/``-n``, ``--type``/``-t``,
``--toxicity``/``--tox``, ``--attribute``/``-a key=value``, ``--upstream``/``--downstream``),
same output on stdout (plain when piped, coloured on a terminal), same error messages on
stderr and exit status 1.  It talks to any Toxiproxy, embedded or Go, through
``trio_cluster.faults.client.Toxiproxy`` (with ``toxiproxy-cli``'s User-Agent), under ``trio.run``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from collections.abc import Awaitable
from typing import Any, Final, NoReturn, TypeVar

import trio

from .client import Toxiproxy, ToxiproxyError
from .version import VERSION

__all__ = ["CliError", "main"]

RED: Final = "\x1b[31m"
GREEN: Final = "\x1b[32m"
YELLOW: Final = "\x1b[33m"
BLUE: Final = "\x1b[34m"
PURPLE: Final = "\x1b[35m"
NONE: Final = "\x1b[0m"
T = TypeVar("T")
_MACHINE: Final = {"x86_64": "amd64", "aarch64": "arm64"}


class CliError(Exception):
    """A failure reported as Go's ``cli.Exit(message, 1)``: the message on stderr, status 1
    (``usage``: the command's help goes to stdout first, as Go's ``ShowSubcommandHelp``)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def _go_float(value: float) -> str:
    """A float64 as Go's ``fmt.Print`` writes it (``100``, ``1.5``, ``1e+06``)."""
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    if -4 <= exponent < 21:
        text = repr(value)
        if "e" not in text:
            return text[:-2] if text.endswith(".0") else text
        return f"{value:f}".rstrip("0").rstrip(".")
    mantissa, _, exp = f"{value:e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    sign, digits = exp[0], exp[1:].lstrip("0")
    return f"{mantissa}e{sign}{digits.zfill(2)}"


def _client(host: str) -> Toxiproxy:
    """The API client, sending ``toxiproxy-cli``'s User-Agent (30 s per call, as Go's)."""
    arch = _MACHINE.get(platform.machine(), platform.machine())
    agent = f"toxiproxy-cli/{VERSION} ({sys.platform}/{arch})"
    return Toxiproxy(host, timeout=30.0, user_agent=agent)


async def _proxy(client: Toxiproxy, name: str) -> dict[str, Any]:
    doc = await client.request("GET", "/proxies/" + name)
    assert isinstance(doc, dict)
    return doc


class _Output:
    """stdout, with colours only on a terminal (as Go checks ``isatty``)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()

    def color(self, code: str) -> str:
        return code if self.tty else ""

    def write(self, text: str) -> None:
        sys.stdout.write(text)

    def hint(self, message: str) -> None:
        if self.tty:
            self.write(f"\n{self.color(NONE)}Hint: {message}\n")

    def width(self, col: str, text: str, tabs: int) -> None:
        tabs = max(tabs - (len(text) // 8 + 1), 0) if self.tty else 0
        padding = "\t" * tabs
        self.write(f"{self.color(col)}{text}{self.color(NONE)}\t{padding}")


def _enabled_color(out: _Output, enabled: bool) -> str:
    return out.color(GREEN if enabled else RED)


async def _api(failure: str, call: Awaitable[T], end: str = "\n") -> T:
    """``await call``; an API error or an unreachable server becomes the command's failure,
    ``CliError("<failure>: <error><end>")`` (toxiproxy-cli's wording)."""
    try:
        return await call
    except ToxiproxyError as exc:
        raise CliError(f"{failure}: {exc}{end}") from None


async def _list(client: Toxiproxy, out: _Output, args: argparse.Namespace) -> None:
    found = await _api("Failed to retrieve proxies", client.request("GET", "/proxies"), end="")
    proxies: dict[str, Any] = found or {}
    if out.tty:
        out.write(
            f"{out.color(GREEN)}Name\t\t\t{out.color(BLUE)}Listen\t\t{out.color(YELLOW)}"
            f"Upstream\t\t{out.color(PURPLE)}Enabled\t\t{out.color(RED)}Toxics\n"
            f"{out.color(NONE)}"
        )
        out.write(f"{out.color(NONE)}{'=' * 86}\n")
        if not proxies:
            out.write(f"{out.color(RED)}no proxies\n{out.color(NONE)}")
            out.hint("create a proxy with `toxiproxy-cli create`")
            return
    for name in sorted(proxies):
        proxy = proxies[name]
        count = str(len(proxy.get("toxics") or []))
        if count == "0" and out.tty:
            count = "None"
        out.width(_enabled_color(out, proxy["enabled"]), proxy["name"], 3)
        out.width(BLUE, proxy["listen"], 2)
        out.width(YELLOW, proxy["upstream"], 3)
        out.width(PURPLE, "enabled" if proxy["enabled"] else "disabled", 2)
        out.write(f"{out.color(RED)}{count}{out.color(NONE)}\n")
    out.hint("inspect toxics with `toxiproxy-cli inspect <proxyName>`")


def _list_toxics(out: _Output, toxics: list[dict[str, Any]], stream: str) -> None:
    if out.tty:
        out.write(f"{out.color(GREEN)}{stream} toxics:\n{out.color(NONE)}")
        if not toxics:
            out.write(f"{out.color(RED)}Proxy has no {stream} toxics enabled.\n{out.color(NONE)}")
            return
    for toxic in toxics:
        if out.tty:
            out.write(f"{out.color(BLUE)}{toxic['name']}:{out.color(NONE)}\t")
        else:
            out.write(f"{toxic['name']}\t")
        out.write(f"type={toxic['type']}\tstream={toxic.get('stream', '')}\t")
        out.write(f"toxicity={float(toxic['toxicity']):.2f}\tattributes=[")
        for key, value in sorted((toxic.get("attributes") or {}).items()):
            shown = _go_float(float(value)) if isinstance(value, int | float) else value
            out.write(f"\t{key}={shown}")
        out.write("\t]\n")


def _required_name(args: argparse.Namespace, message: str) -> str:
    if not args.proxy:
        raise CliError(message, usage=True)
    return str(args.proxy)


async def _inspect(client: Toxiproxy, out: _Output, args: argparse.Namespace) -> None:
    name = _required_name(args, "Proxy name is required as the first argument.\n")
    proxy = await _api(f"Failed to retrieve proxy {name}", _proxy(client, name))
    toxics = proxy.get("toxics") or []
    if not out.tty:
        _list_toxics(out, toxics, "")
        return
    out.write(f"{out.color(PURPLE)}Name: {out.color(NONE)}{proxy['name']}\t")
    out.write(f"{out.color(BLUE)}Listen: {out.color(NONE)}{proxy['listen']}\t")
    out.write(f"{out.color(YELLOW)}Upstream: {out.color(NONE)}{proxy['upstream']}\n")
    out.write(f"{out.color(NONE)}{'=' * 70}\n")
    if not toxics:
        out.write(f"{out.color(RED)}Proxy has no toxics enabled.\n{out.color(NONE)}")
    else:
        _list_toxics(out, [t for t in toxics if t.get("stream") == "upstream"], "Upstream")
        out.write("\n")
        _list_toxics(out, [t for t in toxics if t.get("stream") != "upstream"], "Downstream")
    out.hint("add a toxic with `toxiproxy-cli toxic add`")


async def _toggle(client: Toxiproxy, out: _Output, args: argparse.Namespace) -> None:
    name = _required_name(args, "Proxy name is required as the first argument.\n")
    proxy = await _api(f"Failed to retrieve proxy {name}", _proxy(client, name))
    body = {k: proxy[k] for k in ("name", "listen", "upstream")}
    body["enabled"] = not proxy["enabled"]
    body["toxics"] = proxy.get("toxics")
    saved = await _api(
        f"Failed to toggle proxy {name}", client.request("POST", "/proxies/" + name, body)
    )
    enabled = bool(saved["enabled"])
    col = _enabled_color(out, enabled)
    state = "enabled" if enabled else "disabled"
    out.write(f"Proxy {col}{name}{out.color(NONE)} is now {col}{state}{out.color(NONE)}\n")


def _required_flag(value: str | None, flag: str) -> str:
    if not value:
        raise CliError(f"Required argument '{flag}' was empty.\n", usage=True)
    return value


async def _create(client: Toxiproxy, out: _Output, args: argparse.Namespace) -> None:
    name = _required_name(args, "Proxy name is required as the first argument.\n")
    listen = _required_flag(args.listen, "listen")
    upstream = _required_flag(args.upstream, "upstream")
    body = {"name": name, "listen": listen, "upstream": upstream, "enabled": True, "toxics": None}
    await _api("Failed to create proxy: Create", client.request("POST", "/proxies", body))
    out.write(f"Created new proxy {name}\n")


async def _delete(client: Toxiproxy, out: _Output, args: argparse.Namespace) -> None:
    name = _required_name(args, "Proxy name is required as the first argument.\n")
    await _api(f"Failed to retrieve proxy {name}", _proxy(client, name))
    await _api("Failed to delete proxy: Delete", client.request("DELETE", "/proxies/" + name))
    out.write(f"Deleted proxy {name}\n")


def _toxicity(args: argparse.Namespace) -> float:
    if not args.toxicity:
        return 1.0
    try:
        value = float(args.toxicity)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise CliError("toxicity should be a float between 0 and 1.\n")
    return value


def _attributes(args: argparse.Namespace) -> dict[str, Any]:
    """``key=value`` pairs; numbers become floats, as Go parses them (others stay text)."""
    parsed: dict[str, Any] = {}
    for raw in args.attribute or []:
        for item in raw.split(","):  # urfave's string slices also split on commas
            key, sep, value = item.partition("=")
            if not sep:
                continue
            try:
                parsed[key] = float(value)
            except ValueError:
                parsed[key] = value
    return parsed


def _dumps_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Whole floats as integers, as Go's ``json.Marshal`` writes a float64 ``100``."""
    return {
        k: int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 1e21 else v
        for k, v in attrs.items()
    }


async def _toxic_add(client: Toxiproxy, out: _Output, args: argparse.Namespace) -> None:
    proxy = _required_name(args, "Proxy name is missing.\n")
    toxic_type = _required_flag(args.type, "type")
    if args.upstream and args.downstream:
        raise CliError("Only one should be specified: upstream or downstream.\n")
    stream = "upstream" if args.upstream else "downstream"
    toxicity = _toxicity(args)
    body = {
        "name": args.toxicName or "",
        "type": toxic_type,
        "stream": stream,
        "toxicity": toxicity,
        "attributes": _dumps_attrs(_attributes(args)),
    }
    await _api(
        f"Failed to add toxic: failed to retrieve proxy with name `{proxy}`",
        _proxy(client, proxy),
    )
    toxic = await _api(
        f"Failed to add toxic: failed to add toxic to proxy {proxy}: AddToxic",
        client.request("POST", f"/proxies/{proxy}/toxics", body),
    )
    out.write(
        f"Added {toxic.get('stream', '')} {toxic['type']} toxic '{toxic['name']}' "
        f"on proxy '{proxy}'\n"
    )


async def _toxic_update(client: Toxiproxy, out: _Output, args: argparse.Namespace) -> None:
    proxy = _required_name(args, "Proxy name is missing.\n")
    name = args.toxicName or ""
    body = {"attributes": _dumps_attrs(_attributes(args)), "toxicity": _toxicity(args)}
    await _api(
        f"Failed to update toxic: failed to retrieve proxy with name `{proxy}`",
        _proxy(client, proxy),
    )
    toxic = await _api(
        f"Failed to update toxic: failed to update toxic '{name}' of proxy '{proxy}'",
        client.request("PATCH", f"/proxies/{proxy}/toxics/{name}", body),
    )
    out.write(f"Updated toxic '{toxic['name']}' on proxy '{proxy}'\n")


async def _toxic_remove(client: Toxiproxy, out: _Output, args: argparse.Namespace) -> None:
    proxy = _required_name(args, "Proxy name is missing.\n")
    name = args.toxicName or ""
    await _api(
        f"Failed to remove toxic: failed to retrieve proxy with name `{proxy}`",
        _proxy(client, proxy),
    )
    await _api(
        f"Failed to remove toxic: failed to remove toxic '{name}' from proxy '{proxy}'",
        client.request("DELETE", f"/proxies/{proxy}/toxics/{name}"),
    )
    out.write(f"Removed toxic '{name}' on proxy '{proxy}'\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise CliError(f"Incorrect Usage: {message}")


#: Go's description of ``toxiproxy-cli toxic``: the toxics and their attributes.
_TOXICS_HELP: Final = """\
toxics and their attributes (-a key=value):
  latency:     delay all data +/- jitter; latency=<ms>, jitter=<ms>
  bandwidth:   limit to max KB/s; rate=<KB/s>
  slow_close:  delay from closing; delay=<ms>
  timeout:     stop all data and close after timeout; timeout=<ms>
  reset_peer:  simulate TCP RESET (Connection reset by peer) on the connections, at once or
               after a timeout; timeout=<ms>
  slicer:      slice data into bits with optional delay; average_size=<bytes>,
               size_variation=<bytes>, delay=<microseconds>
  limit_data:  close the connection after some bytes; bytes=<count>
  noop:        pass data through

example: toxiproxy-cli toxic add -t latency -n myToxic -a latency=100 -a jitter=50 myProxy
"""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="toxiproxy-cli",
        description="Simulate network and system conditions: drive a Toxiproxy server (Go's "
        "or the embedded one) with toxiproxy-cli 2.12's commands, flags, output and errors.",
        epilog="Run 'COMMAND --help' for a command's flags.",
        add_help=False,
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument(
        "--host",
        "-h",
        "-host",
        default=os.environ.get("TOXIPROXY_URL", "http://localhost:8474"),
        help='toxiproxy host to connect to (default: "http://localhost:8474") [$TOXIPROXY_URL]',
    )
    parser.add_argument(
        "--version",
        "-v",
        action="version",
        version=f"toxiproxy-cli version {VERSION}",
        help="print the version and exit",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(
        name: str, aliases: list[str], help_text: str, action: Any, usage: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, aliases=aliases, help=help_text, description=f"{help_text}: {usage}"
        )
        sub.set_defaults(action=action, parser=sub)
        return sub

    def proxy_name(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("proxy", nargs="?", metavar="proxyName", help="the proxy's name")

    command("list", ["l", "li", "ls"], "list all proxies", _list, "toxiproxy-cli list")
    for name, aliases, text, action in (
        ("inspect", ["i", "ins"], "inspect a single proxy", _inspect),
        ("toggle", ["tog"], "toggle enabled status on a proxy", _toggle),
        ("delete", ["d"], "delete a proxy", _delete),
    ):
        proxy_name(command(name, aliases, text, action, f"toxiproxy-cli {name} <proxyName>"))
    create = command(
        "create",
        ["c", "new"],
        "create a new proxy",
        _create,
        "toxiproxy-cli create --listen <addr> --upstream <addr> <proxyName>",
    )
    create.add_argument("--listen", "-l", "-listen", help="proxy will listen on this address")
    create.add_argument("--upstream", "-u", "-upstream", help="proxy will forward to this address")
    proxy_name(create)

    toxic = commands.add_parser(
        "toxic",
        aliases=["t"],
        help="add, remove or update a toxic",
        description="add, remove or update a toxic",
        epilog=_TOXICS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    toxics = toxic.add_subparsers(dest="toxic_command", metavar="COMMAND", parser_class=_Parser)
    add = toxics.add_parser("add", aliases=["a"], help="add a new toxic")
    add.set_defaults(action=_toxic_add)
    update = toxics.add_parser("update", aliases=["u"], help="update an enabled toxic")
    update.set_defaults(action=_toxic_update)
    remove = toxics.add_parser(
        "remove", aliases=["r", "delete", "d"], help="remove an enabled toxic"
    )
    remove.set_defaults(action=_toxic_remove)
    for sub in (add, update, remove):
        sub.set_defaults(parser=sub)
        sub.add_argument("--toxicName", "-n", "-toxicName", help="name of the toxic")
        proxy_name(sub)
    add.description = "add a new toxic (see 'toxiproxy-cli toxic --help' for the toxics)"
    update.description = "update an enabled toxic's attributes or toxicity"
    remove.description = "remove an enabled toxic"
    for sub in (add, update):
        sub.add_argument(
            "--toxicity",
            "--tox",
            "-tox",
            "-toxicity",
            help="toxicity of toxic should be a float between 0 and 1 (default: 1.0)",
        )
        sub.add_argument(
            "--attribute",
            "-a",
            "-attribute",
            action="append",
            help="toxic attribute in key=value format (repeat for more)",
        )
    add.add_argument("--type", "-t", "-type", help="type of toxic (see 'toxic --help')")
    add.add_argument(
        "--upstream", "-u", "-upstream", action="store_true", help="add toxic to upstream"
    )
    add.add_argument(
        "--downstream",
        "-d",
        "-downstream",
        action="store_true",
        help="add toxic to downstream (the default)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one CLI command; returns the exit status (0, or 1 with the error on stderr)."""
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        action = getattr(args, "action", None)
        if action is None:
            parser.print_help()
            return 0
        try:
            client = _client(args.host)
        except ValueError as exc:
            raise CliError(f"{exc}\n") from None
        trio.run(action, client, _Output(), args)
    except CliError as exc:
        if exc.usage:
            args.parser.print_help()
        sys.stdout.flush()
        print(str(exc), file=sys.stderr)
        return 1
    return 0
