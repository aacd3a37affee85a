"""Create or remove the workshop's learner accounts (run as root): ``make hub-learners``.

Each learner is a system user of their own, in the group ``mahiax-learners`` (the hub lets
only members of that group and its admins sign in), with a home of mode 0700: no learner
reads another's notebooks, runs or files. The accounts have no password (locked): learners
reach the machine only through the hub, with the workshop password.

    python hub/learners.py add alice bob carol
    python hub/learners.py remove alice bob carol   # deletes their homes too
    python hub/learners.py release alice            # alice signs in from a new browser

The hub binds each learner name to the first browser that signs in with it (see
``hub/jupyterhub_config.py``); ``release`` undoes that for a learner who changed browser.
``remove`` releases too. The claims live in ``$MAHIAX_HUB_STATE_DIR`` (/var/lib/mahiax-hub).
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

GROUP = "mahiax-learners"
STATE_DIR = Path(os.environ.get("MAHIAX_HUB_STATE_DIR", "/var/lib/mahiax-hub"))
CLAIMS = "claims.json"  # learner name -> hash of the token its browser holds
CLAIM_DAYS = 14  # how long a browser keeps its claim cookie
# a portable system user name, and what the hub's username_pattern admits
NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def is_learner(name: str, group: str = GROUP) -> bool:
    """Whether ``name`` is a system user in ``group`` (as supplementary or primary group)."""
    try:
        user = pwd.getpwnam(name)
        g = grp.getgrnam(group)
    except KeyError:
        return False
    return name in g.gr_mem or user.pw_gid == g.gr_gid


def claim_hash(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


def read_claims(path: Path) -> dict[str, str]:
    """The hub's claims (name -> token hash); none when the file does not exist yet."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_claims(path: Path, claims: dict[str, str]) -> None:
    """Replace the claims file atomically, readable by root only."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(claims, indent=1, sort_keys=True))
    tmp.chmod(0o600)
    tmp.replace(path)


def release(names: list[str], state_dir: Path = STATE_DIR) -> None:
    """Forget which browser claimed each name: its next sign-in claims it afresh."""
    path = state_dir / CLAIMS
    claims = read_claims(path)
    for name in map(check_name, names):
        print(f"released {name}" if claims.pop(name, None) else f"{name} was not claimed")
    if path.exists():
        write_claims(path, claims)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise SystemExit(f"bad learner name {name!r}: use 1-32 of a-z, 0-9, '_' and '-', "
                         "starting with a letter or '_'")
    return name


def add(names: list[str], group: str = GROUP) -> None:
    """Create each learner (or add an existing user to the group) with a 0700 home."""
    try:
        grp.getgrnam(group)
    except KeyError:
        subprocess.run(["groupadd", "--system", group], check=True)
    for name in map(check_name, names):
        try:
            pwd.getpwnam(name)
            subprocess.run(["usermod", "-a", "-G", group, name], check=True)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash",
                            "--groups", group, name], check=True)
        home = Path(pwd.getpwnam(name).pw_dir)
        home.chmod(0o700)
        print(f"learner {name}: home {home} (0700)")


def remove(names: list[str], group: str = GROUP, state_dir: Path = STATE_DIR) -> None:
    """Delete each learner that is in the group, with their home; others are refused."""
    release(names, state_dir)
    for name in map(check_name, names):
        try:
            pwd.getpwnam(name)
        except KeyError:
            print(f"no user {name}: nothing to remove")
            continue
        if not is_learner(name, group):
            raise SystemExit(f"{name} is not in {group}: not a learner account, left alone")
        done = subprocess.run(["userdel", "--remove", name], capture_output=True, text=True)
        if done.returncode not in (0, 12):  # 12: the home or mail spool was already gone
            raise SystemExit(f"could not remove {name} (stop the hub first, which stops "
                             f"their servers): {done.stderr.strip()}")
        print(f"removed learner {name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["add", "remove", "release"])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--group", default=GROUP)
    ap.add_argument("--state-dir", type=Path, default=STATE_DIR)
    args = ap.parse_args(argv)
    if args.action == "add":
        add(args.names, args.group)
    elif args.action == "remove":
        remove(args.names, args.group, args.state_dir)
    else:
        release(args.names, args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
