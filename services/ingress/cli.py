"""``python -m services.ingress hash-password``: an argon2 hash for ``submission.users``."""

from __future__ import annotations

import argparse
import getpass
import sys

from moat.passwords import hash_password


def add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "hash-password",
        help="read a password and print its argon2 hash, for submission.users",
        description="Reads a password (twice from a terminal, one line from a pipe) and "
        "prints its argon2 hash: the value of a user in submission.users.",
    )


def run(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("an empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0
