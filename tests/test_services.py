"""`recsys up/down/status` through the real CLI, on its own ports and data dir."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.processes import free_port, port_open


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(
        RECSYS_DATA_DIR=str(tmp_path / "data"),
        RECSYS_BROKER__PORT=str(free_port()),
        RECSYS_REDIS__PORT=str(free_port()),
    )
    yield env
    _cli(env, "down")


def test_up_twice_status_down(cli_env: dict[str, str], tmp_path: Path) -> None:
    broker_port, redis_port = int(cli_env["RECSYS_BROKER__PORT"]), int(cli_env["RECSYS_REDIS__PORT"])
    stopped = _cli(cli_env, "status")
    assert stopped.returncode == 3 and "stopped" in stopped.stdout

    first = _cli(cli_env, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp_path / "data" / "run"
    pids = {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}
    assert set(pids) == {"broker", "redis"} and all(_alive(p) for p in pids.values())

    second = _cli(cli_env, "up")  # harmless: same processes, still serving
    assert second.returncode == 0, second.stdout + second.stderr
    assert {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")} == pids

    status = _cli(cli_env, "status")
    assert status.returncode == 0
    assert f"pid {pids['broker']}" in status.stdout and f"pid {pids['redis']}" in status.stdout

    assert (tmp_path / "data" / "redis").is_dir()  # AOF lives under the data dir
    down = _cli(cli_env, "down")
    assert down.returncode == 0 and "broker" in down.stdout and "redis" in down.stdout
    assert not any(_alive(p) for p in pids.values())
    assert not port_open("127.0.0.1", broker_port) and not port_open("127.0.0.1", redis_port)
    assert list(run_dir.glob("*.pid")) == []
    after = _cli(cli_env, "status")
    assert after.returncode == 3 and "stopped" in after.stdout
    assert "nothing was running" in _cli(cli_env, "down").stdout


def test_stale_pid_file_is_not_trusted(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "data" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "broker.pid").write_text(str(os.getpid()))  # a live PID that is not a broker
    status = _cli(cli_env, "status")
    assert "broker: stopped" in status.stdout
    assert "nothing was running" in _cli(cli_env, "down").stdout
    assert _alive(os.getpid())


def test_help_is_free_of_third_party_noise() -> None:
    result = subprocess.run([sys.executable, "-m", "infra.cli", "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONWARNINGS": "default"})  # what a user without our filter would see
    assert result.returncode == 0 and "demo" in result.stdout
    assert "Warning" not in result.stdout + result.stderr


def test_port_taken_by_someone_else_is_a_clear_error(cli_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(cli_env["RECSYS_BROKER__PORT"])))
        squatter.listen()
        result = _cli(cli_env, "up")
    assert result.returncode == 2
    assert "taken by another process" in result.stdout


def test_demo_main_job_runs_the_whole_chain(cli_env: dict[str, str]) -> None:
    import re

    from tests.conftest import ML100K

    password, token = "demo-redis-secret-8c1f", "demo-admin-token-77aa"  # every process of the demo needs both
    cli_env.update(RECSYS_ML100K_PATH=str(ML100K), RECSYS_SERVING__PORT=str(free_port()), COLUMNS="200",
                   RECSYS_REDIS__PASSWORD=password, RECSYS_SERVING__ADMIN_TOKEN=token,
                   # the chain, not the recipe's quality (bench/prequential.py): one TorchRec epoch and the
                   # ranker's lists of the last 30 days keep its two retrains short
                   RECSYS_TRAINING__EPOCHS="1", RECSYS_RANKER__TRAIN_DAYS="30")
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "demo"], env=cli_env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    data_dir = Path(cli_env["RECSYS_DATA_DIR"])  # after `up`, a stream job, the API and the learner ran there
    holding = [p for p in data_dir.rglob("*") if p.is_file() and (password.encode() in p.read_bytes()
                                                                   or token.encode() in p.read_bytes())]
    assert holding == [], f"secrets written to disk in clear: {holding}"
    assert password not in result.stdout + result.stderr and token not in result.stdout + result.stderr
    assert "DeprecationWarning" not in result.stdout + result.stderr  # only our progress and results
    flat = " ".join(result.stdout.split())  # rich wraps long lines at the terminal width
    assert "acknowledged 99,464 events" in flat
    assert "stream job: 100,000 records read, 0 late, 0 to the DLQ" in flat
    assert "v0001 published; promoted" in flat
    assert "catalogue: 1,682 titles and genres from u.item" in flat
    assert re.search(r"(\(\d{4}\)|\w…) \([01]\.\d\d, ", flat), flat[-3000:]  # the tables show titles, not ids
    online = re.search(r"online learner: (\d+) versions published while the day played \(([\d,]+) events trained", flat)
    assert online and int(online[1]) >= 1 and int(online[2].replace(",", "")) > 0, flat[-3000:]
    nightly = re.search(r"hot swap to (v\d+): merged \1/delta-from-(v\d+)", flat)  # the delta, not the full weights
    assert nightly and nightly[2] != "v0001", flat[-3000:]  # ... from the learner's last version, which the API served
    assert f"online learner rebased onto {nightly[1]}" in flat
    held_out = re.search(r"HR@10 on the held-out period: API ([0-9.]+) vs item-kNN ([0-9.]+) vs popularity ([0-9.]+) "
                         r"\((\d+) users", flat)
    assert held_out, flat[-3000:]
    api, knn, popularity, users = float(held_out[1]), float(held_out[2]), float(held_out[3]), int(held_out[4])
    assert users >= 10 and 0 < api <= 1 and 0 < knn <= 1 and 0 < popularity <= 1  # measured on the live API; see docs/serving.md
    per_event = re.search(r"HR@10 per held-out event \(recommend, then send it\): API ([0-9.]+) vs item-kNN ([0-9.]+) "
                          r"vs popularity ([0-9.]+) \((\d+) positive events", flat)
    assert per_event, flat[-3000:]
    print(held_out[0], per_event[0])
    api, knn, popularity, scored = float(per_event[1]), float(per_event[2]), float(per_event[3]), int(per_event[4])
    assert scored >= 100
    assert api > popularity and knn > popularity  # the live recommendations beat popularity on the held-out day
    live = re.search(r"live attribution: ([\d,]+) of ([\d,]+) served lists counted, ([\d,]+) with an engaged item", flat)
    assert live, flat[-3000:]  # the attribution job joined what the API served with what the users did next
    counted, sent, engaged = (int(live[i].replace(",", "")) for i in (1, 2, 3))
    assert counted >= sent > 50 and 0 < engaged < counted  # ~100 lists: the held-out day has 11 users
    report = json.loads((Path(cli_env["RECSYS_DATA_DIR"]) / "reports" / "holdout.json").read_text())
    assert report["per_event"]["hr_item_knn"] == pytest.approx(knn, abs=5e-4)  # what the dashboard's panel shows
    table = [line for line in result.stdout.splitlines() if "│" in line]
    assert any("Delta `events` rows" in row and "100,000" in row for row in table)
    assert any("events.dlq" in row and "│ 0 " in row for row in table)
    assert re.search(rf"v0001 \(full\), .*{nightly[1]} \(delta\)", flat)


def test_production_manifests_are_valid_yaml() -> None:
    import yaml

    root = Path(__file__).resolve().parents[1] / "infra" / "production"
    files = sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml"))
    assert len(files) >= 4
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        assert docs, f


def test_free_port_never_repeats_and_skips_listening_ports() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)  # a broker and a Redis never get the same port
    assert taken not in ports and all(20_000 <= p < 32_000 for p in ports)
    assert not any(port_open("127.0.0.1", p) for p in ports[:20])
