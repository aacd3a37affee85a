"""The workshop hub's configuration (``hub/jupyterhub_config.py``), loaded as JupyterHub loads
it, without starting a hub: who may sign in, where secrets go, what a learner's server gets.
The end-to-end test (``test_hub_e2e.py``, root only) runs the real thing."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("jupyterhub")
from traitlets.config.loader import PyFileConfigLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "hub"
WORKSHOP, ADMIN = "workshop-pass-1", "an-admin-password-of-more-than-32-chars"


def _hub_copy(tmp_path: Path) -> Path:
    """``hub/`` copied into a checkout under a folder of mode 0700 that the test makes: the
    config's logic must not depend on where the repository was cloned (a ``mktemp -d`` folder
    is 0700, and so are many homes)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)  # whatever the umask
    dest = private / "checkout" / "hub"
    shutil.copytree(HUB, dest, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    return dest


def _hub_module(hub: Path, name: str):
    """``hub/<name>.py`` of the checkout ``hub``, imported under its own name, as the config
    imports it."""
    spec = importlib.util.spec_from_file_location(name, hub / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(tmp_path: Path, monkeypatch, *, hub: Path | None = None,
          location_check: bool = False, **env: str):
    """The config as JupyterHub reads it, from ``hub`` (default: a copy of ``hub/`` in a
    checkout learners cannot enter), with its runtime and state folder under ``tmp_path``.

    ``location_check``: whether the config's check that learners can enter the checkout runs
    for real. Off, it answers "every folder can be entered", so the rest of the config's logic
    is tested wherever the repository lies; the check itself has tests of its own below."""
    hub = hub or _hub_copy(tmp_path)
    runtime_module = _hub_module(hub, "runtime")
    if not location_check:
        monkeypatch.setattr(runtime_module, "unreachable", lambda path: None)
    monkeypatch.setitem(sys.modules, "runtime", runtime_module)
    runtime = tmp_path / "runtime"
    for f in (runtime / "venv" / "bin" / "python",
              runtime / "node_modules" / ".bin" / "configurable-http-proxy"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    defaults = {"MAHIAX_HUB_RUNTIME": str(runtime),
                "MAHIAX_HUB_STATE_DIR": str(tmp_path / "state"),
                "MAHIAX_HUB_PASSWORD": WORKSHOP, "MAHIAX_HUB_ADMIN_PASSWORD": ADMIN}
    for k, v in {**defaults, **env}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the config adds hub/ to the path
    return PyFileConfigLoader("jupyterhub_config.py", path=str(hub)).load_config()


def test_the_config_refuses_a_checkout_learners_cannot_enter_and_names_the_folder(
        tmp_path, monkeypatch):
    private = tmp_path / "private"
    with pytest.raises(SystemExit) as refused:
        _load(tmp_path, monkeypatch, location_check=True)
    message = str(refused.value)
    # the first folder on the way that others cannot enter: ours, or one above it
    blocked = next(f for f in [*reversed(private.parents), private]
                   if not f.stat().st_mode & 0o001)
    assert message.startswith(f"learners cannot enter {blocked} (no o+x)"), message
    assert f"cannot run the lab from {private / 'checkout'}" in message
    assert "serve the hub from a checkout every user can read" in message


@pytest.fixture
def open_base():
    """A folder of mode 0755 in the system's temp folder, every folder above it enterable by
    others (skipped where the temp folder is not), removed afterwards."""
    runtime = _hub_module(HUB, "runtime")
    tmp = Path(tempfile.gettempdir())
    if runtime.unreachable(tmp) is not None:
        pytest.skip(f"others cannot enter {runtime.unreachable(tmp)}, above the temp folder")
    base = Path(tempfile.mkdtemp(prefix="mahiax-hub-test-"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base)


def test_the_location_check_names_the_first_folder_others_cannot_enter(open_base):
    runtime = _hub_module(HUB, "runtime")
    (open_base / "open" / "lab").mkdir(parents=True)
    for folder in (open_base / "open", open_base / "open" / "lab"):
        folder.chmod(0o755)
    closed = open_base / "closed"
    (closed / "inner" / "lab").mkdir(parents=True)
    closed.chmod(0o700)
    assert runtime.unreachable(open_base / "open" / "lab") is None
    assert runtime.unreachable(closed / "inner" / "lab") == closed
    assert runtime.unreachable(closed) == closed
    (open_base / "open").chmod(0o754)  # readable by others, but no o+x: cannot be entered
    assert runtime.unreachable(open_base / "open" / "lab") == open_base / "open"


def test_the_config_serves_a_checkout_every_user_can_enter(open_base, tmp_path, monkeypatch):
    hub = open_base / "checkout" / "hub"
    shutil.copytree(HUB, hub, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    for folder in (hub.parent, hub):
        folder.chmod(0o755)
    cfg = _load(tmp_path, monkeypatch, hub=hub, location_check=True)
    assert cfg.Spawner.cmd[0] == str(tmp_path / "runtime" / "venv" / "bin" / "python")


def test_a_short_or_missing_workshop_password_is_refused_with_the_variable_named(
        tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="MAHIAX_HUB_PASSWORD must be set .* 8 or more"):
        _load(tmp_path, monkeypatch, MAHIAX_HUB_PASSWORD="short")


def test_passwords_leave_the_hubs_environment_once_read(tmp_path, monkeypatch):
    cfg = _load(tmp_path, monkeypatch)
    assert cfg.SharedPasswordAuthenticator.user_password == WORKSHOP
    assert "MAHIAX_HUB_PASSWORD" not in os.environ
    assert "MAHIAX_HUB_ADMIN_PASSWORD" not in os.environ


def test_an_unset_admin_password_is_generated_into_the_root_only_state_folder(
        tmp_path, monkeypatch):
    monkeypatch.delenv("MAHIAX_HUB_ADMIN_PASSWORD", raising=False)
    cfg = _load(tmp_path, monkeypatch, MAHIAX_HUB_ADMIN_PASSWORD="")
    state = tmp_path / "state"
    secret = (state / "admin_password").read_text().strip()
    assert cfg.SharedPasswordAuthenticator.admin_password == secret and len(secret) >= 32
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "admin_password").stat().st_mode) == 0o600
    assert cfg.JupyterHub.cookie_secret_file.startswith(str(state))
    assert cfg.JupyterHub.db_url == f"sqlite:///{state / 'jupyterhub.sqlite'}"


def test_only_the_learners_group_and_the_admin_may_sign_in(tmp_path, monkeypatch):
    cfg = _load(tmp_path, monkeypatch)
    assert cfg.Authenticator.allow_all is False  # True would skip check_allowed
    auth = cfg.JupyterHub.authenticator_class(config=cfg)
    assert auth.check_allowed("instructor") is True
    assert auth.check_allowed("root") is False  # an account, but not a learner
    assert auth.check_allowed("nobody-with-this-name") is False

    async def login(name: str, password: str):
        return await auth.authenticate(None, {"username": name, "password": password})

    assert asyncio.run(login("alice", WORKSHOP))["name"] == "alice"
    assert asyncio.run(login("alice", WORKSHOP + "x")) is None
    assert asyncio.run(login("instructor", WORKSHOP)) is None  # the admin has their own
    assert asyncio.run(login("instructor", ADMIN))["admin"] is True


def test_a_learners_server_is_their_jupyterlab_on_the_lab_interpreter_with_their_store(
        tmp_path, monkeypatch):
    cfg = _load(tmp_path, monkeypatch)
    assert cfg.JupyterHub.ip == "127.0.0.1" and cfg.JupyterHub.hub_ip == "127.0.0.1"
    assert cfg.JupyterHub.spawner_class == "localprocess"
    assert cfg.Spawner.cmd == [str(tmp_path / "runtime" / "venv" / "bin" / "python"), "-m",
                               "jupyterhub.singleuser"]
    assert cfg.Spawner.default_url == "/lab"
    assert callable(cfg.Spawner.pre_spawn_hook)
    env = cfg.Spawner.environment
    assert env["MAHIAX_DASHBOARD_AUTOSTART"] == "0" and env["OMP_NUM_THREADS"] == "1"

    class _User:
        name = "root"  # an account every machine has; the store goes under its home

    class _Spawner:
        user = _User()

    import pwd
    home = pwd.getpwnam("root").pw_dir
    assert env["MAHIAX_STORE"](_Spawner()) == f"{home}/runs/mahiax.sqlite"


def test_learner_names_are_checked_before_any_account_is_touched():
    sys.path.insert(0, str(HUB))
    try:
        import learners
    finally:
        sys.path.remove(str(HUB))
    for bad in ["Root", "a b", "-x", "../etc", "x" * 33, ""]:
        with pytest.raises(SystemExit, match="bad learner name"):
            learners.check_name(bad)
    assert learners.check_name("alice_2") == "alice_2"
    assert not learners.is_learner("root")


class _Browser:
    """A login request's handler as the authenticator uses it: one browser's cookie jar."""

    def __init__(self):
        self.jar: dict[str, bytes] = {}
        self.hub = type("Hub", (), {"base_url": "/hub/"})()

    def get_secure_cookie(self, name, max_age_days=None):
        return self.jar.get(name)

    def set_secure_cookie(self, name, value, **options):
        assert options["httponly"] and options["path"] == "/hub/"
        self.jar[name] = value


def test_a_learner_name_belongs_to_the_first_browser_until_released(tmp_path, monkeypatch):
    cfg = _load(tmp_path, monkeypatch)
    auth = cfg.JupyterHub.authenticator_class(config=cfg)
    monkeypatch.setattr(auth, "check_allowed", lambda *a, **k: True)  # alice: a learner
    sys.path.insert(0, str(HUB))
    try:
        import learners
    finally:
        sys.path.remove(str(HUB))

    def login(browser):
        data = {"username": "alice", "password": WORKSHOP}
        return asyncio.run(auth.authenticate(browser, data))

    first, second = _Browser(), _Browser()
    assert login(first)["name"] == "alice"  # claims the name
    claims = tmp_path / "state" / "claims.json"
    assert stat.S_IMODE(claims.stat().st_mode) == 0o600
    assert login(first)["name"] == "alice"  # the same browser, again
    assert login(second) is None  # someone else with the workshop password
    second.jar = {k: b"forged" for k in first.jar}
    assert login(second) is None
    learners.release(["alice"], tmp_path / "state")
    second.jar = {}
    assert login(second)["name"] == "alice"  # a new browser after the instructor's release
    assert login(first) is None


def test_the_class_service_is_hub_managed_on_loopback_and_learners_tokens_reach_it(
        tmp_path, monkeypatch):
    cfg = _load(tmp_path, monkeypatch, MAHIAX_HUB_CLASS_PORT="8123",
                MAHIAX_HUB_INSTRUCTORS="ta1, ta2 ta1")
    (service,) = cfg.JupyterHub.services
    assert service["name"] == "mahiax-class" and service["url"] == "http://127.0.0.1:8123"
    assert service["command"][0] == sys.executable  # the hub's own interpreter, as root
    assert Path(service["command"][1]).name == "class_service.py"
    store = Path(service["command"][service["command"].index("--store") + 1])
    assert store.parent == tmp_path / "state"  # the root-only state folder
    access = "access:services!service=mahiax-class"
    roles = {role["name"]: role for role in cfg.JupyterHub.load_roles}
    assert set(roles["user"]["scopes"]) == {"self", access}
    assert roles["mahiax-class-service"]["services"] == ["mahiax-class"]
    assert set(roles["mahiax-class-service"]["scopes"]) == {
        "list:users", "read:users:name", "read:users:groups"}
    # a server's token keeps JupyterHub's default scopes and reaches the service
    assert set(cfg.Spawner.server_token_scopes) == {
        "users:activity!user", "access:servers!server", access}
    assert cfg.Spawner.environment["MAHIAX_CLASS_URL"] == \
        "http://127.0.0.1:8123/services/mahiax-class/"
    assert cfg.JupyterHub.load_groups == {"mahiax-instructors": {"users": ["ta1", "ta2"]}}


def test_an_instructor_list_with_a_name_that_is_not_a_user_name_is_refused(
        tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"MAHIAX_HUB_INSTRUCTORS names \['Root'\]"):
        _load(tmp_path, monkeypatch, MAHIAX_HUB_INSTRUCTORS="ta1,Root")
