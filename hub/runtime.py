"""Build the interpreter learners' servers run with: ``build/hub/venv`` (``make hub-setup``).

A learner's Jupyter server, kernels and dashboard run as that learner's own system user, so
every file of the lab's Python must be readable by all. The project's ``.venv`` is (pip
writes 0644 files), but its interpreter may not be: a venv's ``python`` is a link to the
interpreter that made it, and an interpreter under ``/root`` (pyenv, a root-only home) is
out of a learner's reach.

So the learners get a venv of their own made by an interpreter every user may run
(``--python``, default ``/usr/bin/python3``):

- with the same major.minor version as the project's venv, it is a light layer: a ``.pth``
  file adds the project venv's ``site-packages`` (``site.addsitedir``, so the editable
  install of ``mahiax`` and every entry point resolve) and ``etc``/``share`` link to the
  project venv's (Jupyter's extension config, JupyterLab's assets, kernel specs): nothing is
  installed twice;
- with another version, it is a full install of ``requirements.lock`` and the package.

Usage: ``python hub/runtime.py --python /usr/bin/python3 --venv build/hub/venv``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYER = "mahiax-lab.pth"


def unreachable(path: Path) -> Path | None:
    """The first folder on the way to ``path`` that other users cannot enter (no ``o+x``),
    or None: learners' servers run as other users, so the lab must lie on a path they can
    walk (``/root/...`` or a 0700 temp folder cannot serve a hub)."""
    path = path.resolve()
    for folder in [*reversed(path.parents), path]:
        if folder.is_dir() and not folder.stat().st_mode & 0o001:
            return folder
    return None


def version_of(python: str) -> str:
    """``X.Y`` of an interpreter."""
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def site_packages(venv: Path, version: str) -> Path:
    return venv / "lib" / f"python{version}" / "site-packages"


def build(python: str, venv: Path) -> str:
    """Make ``venv`` with ``python``; returns how the lab's packages got there."""
    if not shutil.which(python) and not Path(python).exists():
        raise SystemExit(f"no interpreter {python!r}: give one every user may run, "
                         "e.g. --python /usr/bin/python3")
    if venv.exists():
        shutil.rmtree(venv)
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    theirs = version_of(python)
    if theirs == ours:
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
        layer = site_packages(venv, theirs) / LAYER
        layer.write_text(
            f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
        # Jupyter finds extensions' config, JupyterLab's assets and kernel specs under
        # sys.prefix (etc/jupyter, share/jupyter): the project venv's
        for shared in ("etc", "share"):
            if (Path(sys.prefix) / shared).is_dir():
                (venv / shared).symlink_to(Path(sys.prefix) / shared)
        how = f"layered on {sysconfig.get_paths()['purelib']}"
    else:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
               "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REPO / "requirements.lock")], check=True)
        subprocess.run([*pip, "--no-deps", "-e", str(REPO)], check=True)
        how = f"a full install for Python {theirs}"
    for root, dirs, files in os.walk(venv):  # readable by every learner
        for name in dirs + files:
            p = Path(root) / name
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    venv.chmod(0o755)
    return how


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="an interpreter every user may run (default /usr/bin/python3)")
    ap.add_argument("--venv", type=Path, default=REPO / "build" / "hub" / "venv")
    args = ap.parse_args(argv)
    blocked = unreachable(REPO)
    if blocked is not None:
        print(f"warning: other users cannot enter {blocked}, so learners cannot run the lab "
              f"from {REPO}; serve the hub from a checkout every user can read "
              "(e.g. /opt/mahiax-lab)", file=sys.stderr)
    how = build(args.python, args.venv.absolute())
    probe = subprocess.run(
        [str(args.venv / "bin" / "python"), "-c",
         "import mahiax, jupyterhub, jupyter_server_proxy, streamlit, torch; print('ok')"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"the learners' venv cannot import the lab:\n{probe.stderr[-2000:]}")
    print(f"learners' interpreter: {args.venv / 'bin' / 'python'} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
