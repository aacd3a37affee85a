"""JupyterHub for a MAHIA-X Lab workshop on one machine: ``make hub`` (docs/workshop.md).

- Sign-in: JupyterHub's shared-password authenticator. Learners use the workshop password
  the instructor sets (``MAHIAX_HUB_PASSWORD``, 8+ characters); the admin (``instructor``
  by default) has a password of their own (``MAHIAX_HUB_ADMIN_PASSWORD``, 32+ characters;
  generated and kept in the hub's state folder when unset). Only members of the system group
  ``mahiax-learners`` (``make hub-learners``) and the admins may sign in, so the workshop
  password never opens a server as ``root`` or any other account of the machine; and each
  learner name belongs to the first browser that signs in with it (``WorkshopAuthenticator``).
- Isolation: each learner's server runs as their own system user (LocalProcessSpawner), in
  a home of mode 0700; the hub's cookie secret, database and name claims live in a root-only
  folder (``MAHIAX_HUB_STATE_DIR``, default ``/var/lib/mahiax-hub``, mode 0700).
- The lab for all: learners' servers run ``build/hub/venv`` (``hub/runtime.py``), the
  project's packages; on first start a learner gets a copy of the lessons in ``~/lessons``;
  ``MAHIAX_STORE`` puts their runs in ``~/runs``, read by their own dashboard (the
  "MAHIA-X dashboard" tile, ``mahiax/classroom/jupyter_proxy.py``).
- The class: each exercise check a learner runs also reaches the class service
  (``hub/class_service.py``, a hub-managed service on 127.0.0.1) with the learner's own API
  token; only the instructors (the admins and the hub group ``mahiax-instructors``) read the
  class summary, export it and delete it.

Settings (environment): ``MAHIAX_HUB_IP`` (127.0.0.1), ``MAHIAX_HUB_PORT`` (8000),
``MAHIAX_HUB_API_PORT`` (8081), ``MAHIAX_HUB_PROXY_API_PORT`` (8001), ``MAHIAX_HUB_ADMIN``
(instructor), ``MAHIAX_HUB_THREADS`` (torch threads per kernel, 1), ``MAHIAX_HUB_RUNTIME``
(build/hub), ``MAHIAX_HUB_CLASS_PORT`` (the class service, 8002), ``MAHIAX_HUB_INSTRUCTORS``
(more instructors: user names, comma- or space-separated). The passwords are removed from the
hub's environment once read.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import sys
from hmac import compare_digest
from pathlib import Path

from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from traitlets import Bool, Unicode

HUB_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(HUB_DIR))
from learners import (  # noqa: E402
    CLAIM_DAYS,
    GROUP,
    NAME,
    claim_hash,
    is_learner,
    read_claims,
    write_claims,
)
from runtime import unreachable  # noqa: E402

REPO = HUB_DIR.parent
LESSONS = REPO / "notebooks"
RUNTIME = Path(os.environ.get("MAHIAX_HUB_RUNTIME", REPO / "build" / "hub"))
PYTHON = RUNTIME / "venv" / "bin" / "python"  # hub/runtime.py builds it
CHP = RUNTIME / "node_modules" / ".bin" / "configurable-http-proxy"
STATE = Path(os.environ.get("MAHIAX_HUB_STATE_DIR", "/var/lib/mahiax-hub"))
ADMIN = os.environ.get("MAHIAX_HUB_ADMIN", "instructor")
CLASS_SERVICE = "mahiax-class"  # the service's name: its URL prefix and its scopes say it
CLASS_PORT = int(os.environ.get("MAHIAX_HUB_CLASS_PORT", "8002"))
INSTRUCTORS_GROUP = "mahiax-instructors"  # a hub group: its members see the class, as admins

c = get_config()  # noqa: F821  (JupyterHub defines it when it loads this file)

for needed in (PYTHON, CHP):
    if not needed.exists():
        raise SystemExit(f"{needed} is missing: run `make hub-setup` first")
_blocked = unreachable(REPO)
if _blocked is not None:  # learners' servers would fail to start, one confusing error each
    raise SystemExit(f"learners cannot enter {_blocked} (no o+x), so they cannot run the lab "
                     f"from {REPO}: serve the hub from a checkout every user can read, e.g. "
                     "/opt/mahiax-lab")

# -- the hub's secrets: a root-only folder ------------------------------------------------
STATE.mkdir(parents=True, exist_ok=True)
STATE.chmod(0o700)
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")

# -- addresses: everything on loopback unless the instructor opens the public port --------
c.JupyterHub.ip = os.environ.get("MAHIAX_HUB_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("MAHIAX_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("MAHIAX_HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = (
    f"http://127.0.0.1:{int(os.environ.get('MAHIAX_HUB_PROXY_API_PORT', '8001'))}")
c.ConfigurableHTTPProxy.command = [str(CHP)]


# -- sign-in ------------------------------------------------------------------------------
class WorkshopAuthenticator(SharedPasswordAuthenticator):
    """The shared-password login, open only to the workshop's learner accounts and admins.

    A shared password alone lets anyone who knows it sign in under any learner's name. So
    each learner name is claimed by the first browser that signs in with it: the hub keeps a
    hash of a random token in ``claims_file`` (root only) and gives the browser the token in
    a signed, HTTP-only cookie; a later sign-in under that name without the token is refused.
    A learner who changes browser asks the instructor: ``hub/learners.py release NAME``.
    """

    learners_group = Unicode(GROUP, config=True,
                             help="system group whose members may sign in as learners")
    claim_names = Bool(True, config=True,
                       help="bind each learner name to the first browser that signs in")
    claims_file = Unicode(config=True, help="where the claims are kept (root only)")

    def check_allowed(self, username, authentication=None):
        return username in self.admin_users or is_learner(username, self.learners_group)

    async def authenticate(self, handler, data):
        user = await super().authenticate(handler, data)
        if user is None or user.get("admin") or not self.claim_names \
                or not self.check_allowed(user["name"]):
            return user  # refused already, an admin, or refused next by check_allowed
        name, cookie = user["name"], f"mahiax-claim-{user['name']}"
        claims = read_claims(Path(self.claims_file))
        token = handler.get_secure_cookie(cookie, max_age_days=CLAIM_DAYS)
        if name in claims:
            if token is None or not compare_digest(claim_hash(token), claims[name]):
                self.log.warning("refused %s: the name is claimed by another browser "
                                 "(hub/learners.py release %s frees it)", name, name)
                return None
            return user
        token = secrets.token_urlsafe(32).encode()
        claims[name] = claim_hash(token)
        write_claims(Path(self.claims_file), claims)
        handler.set_secure_cookie(cookie, token, path=handler.hub.base_url, httponly=True,
                                  expires_days=CLAIM_DAYS)
        return user


def _password(var: str, minimum: int, generate_into: Path | None = None) -> str:
    value = os.environ.pop(var, "")  # not inherited by the proxy or learners' servers
    if not value and generate_into is not None:
        if not generate_into.exists():
            generate_into.write_text(secrets.token_urlsafe(32) + "\n")
            generate_into.chmod(0o600)
        value = generate_into.read_text().strip()
        print(f"admin password: in {generate_into} (root only)", file=sys.stderr)
    if len(value) < minimum:
        raise SystemExit(f"{var} must be set to a password of {minimum} or more characters "
                         f"(got {len(value)}); e.g. {var}='...' make hub")
    return value


c.JupyterHub.authenticator_class = WorkshopAuthenticator
c.WorkshopAuthenticator.claims_file = str(STATE / "claims.json")
c.SharedPasswordAuthenticator.user_password = _password("MAHIAX_HUB_PASSWORD", 8)
c.SharedPasswordAuthenticator.admin_password = _password(
    "MAHIAX_HUB_ADMIN_PASSWORD", 32, STATE / "admin_password")
c.Authenticator.admin_users = {ADMIN}
c.Authenticator.username_pattern = NAME.pattern
# allow_all must stay False: when True, JupyterHub skips check_allowed and the workshop
# password would open a server as any account of the machine, root included
c.Authenticator.allow_all = False


# -- each learner's server: their own user, their own home, the lab's packages -----------
def _home(spawner) -> Path:
    return Path(pwd.getpwnam(spawner.user.name).pw_dir)


def prepare_home(spawner) -> None:
    """Before each start: the home is the learner's and 0700; lessons copied on first start;
    ``~/runs`` for the run store."""
    user = pwd.getpwnam(spawner.user.name)  # KeyError: no such account (learners.py add)
    home = Path(user.pw_dir)
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, user.pw_uid, user.pw_gid)
    home.chmod(0o700)
    made = []
    lessons = home / "lessons"
    if not lessons.exists():
        lessons.mkdir()
        made.append(lessons)
        for nb in sorted(LESSONS.glob("*.ipynb")):
            shutil.copy(nb, lessons / nb.name)
            made.append(lessons / nb.name)
    runs = home / "runs"
    if not runs.exists():
        runs.mkdir()
        made.append(runs)
    for p in made:
        os.chown(p, user.pw_uid, user.pw_gid)


c.JupyterHub.spawner_class = "localprocess"
c.Spawner.pre_spawn_hook = prepare_home
c.Spawner.cmd = [str(PYTHON), "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.start_timeout = 120  # a cold start imports JupyterLab on a busy small machine
c.Spawner.http_timeout = 120
_threads = os.environ.get("MAHIAX_HUB_THREADS", "1")  # a class shares the cores
c.Spawner.environment = {
    "MAHIAX_STORE": lambda spawner: str(_home(spawner) / "runs" / "mahiax.sqlite"),
    "MAHIAX_DASHBOARD_AUTOSTART": "0",  # runs come from the lessons, not a demo per learner
    "OMP_NUM_THREADS": _threads,
    "MKL_NUM_THREADS": _threads,
    "PATH": f"{PYTHON.parent}:/usr/local/bin:/usr/bin:/bin",
    # where a kernel sends the learner's attempts (mahiax.classroom.class_view; the class service
    # below)
    "MAHIAX_CLASS_URL": f"http://127.0.0.1:{CLASS_PORT}/services/{CLASS_SERVICE}/",
}


# -- the class: attempts reach the instructor through a hub-managed service --------------
def _instructors(value: str) -> list[str]:
    """``MAHIAX_HUB_INSTRUCTORS``: user names, comma- or space-separated."""
    names = value.replace(",", " ").split()
    bad = [n for n in names if not NAME.fullmatch(n)]
    if bad:
        raise SystemExit(f"MAHIAX_HUB_INSTRUCTORS names {bad}, not user names: use 1-32 of "
                         "a-z, 0-9, '_' and '-', starting with a letter or '_'")
    return sorted(set(names))


_class_access = f"access:services!service={CLASS_SERVICE}"
c.JupyterHub.services = [{
    "name": CLASS_SERVICE,
    "url": f"http://127.0.0.1:{CLASS_PORT}",
    "command": [sys.executable, str(HUB_DIR / "class_service.py"),
                "--store", str(STATE / "class-attempts.sqlite"),
                "--instructors-group", INSTRUCTORS_GROUP, "--learners-group", GROUP],
    "display": False,  # an API for kernels and the dashboard, not a page to browse
}]
c.JupyterHub.load_roles = [
    # every user may reach the service; what each may do there, the service decides
    {"name": "user", "scopes": ["self", _class_access]},
    # the service lists the hub's users (the class, who teaches) and nothing more
    {"name": "mahiax-class-service", "services": [CLASS_SERVICE],
     "scopes": ["list:users", "read:users:name", "read:users:groups"]},
]
c.JupyterHub.load_groups = {
    INSTRUCTORS_GROUP: {"users": _instructors(os.environ.get("MAHIAX_HUB_INSTRUCTORS", ""))},
}
# a server's own token ($JUPYTERHUB_API_TOKEN, which its kernels inherit): JupyterHub's
# default ("server" role) plus access to the class service, to send the learner's attempts
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", _class_access]
