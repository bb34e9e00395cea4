"""The import structure holds: layers run one way, no circles, PyFlink stays in the job, the
model library stays free of the app, no private names cross packages, every Kafka client comes
from the one factory.

Read from the source (ast), so a violation fails here with the file and the line that causes it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streaming", "models", "infra", "features", "batch", "serving")

# lowest first; a module may import its own layer and those below, never one above
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("event contract", ("streaming.events",)),
    ("model library", ("models",)),
    ("ground: settings, processes, services, clients", ("infra",)),
    ("feature definitions", ("features",)),
    ("streaming", ("streaming",)),
    ("serving", ("serving",)),
    ("batch", ("batch",)),
    ("entry points: the CLI and the demo", ("infra.cli",)),
]
PYFLINK_MODULES = {"streaming.job.feature_job", "streaming.job.feature_functions", "streaming.job.attribution_job",
                   "streaming.job.attribution_function"}  # the stream job's own modules
KAFKA_FACTORY = "infra.kafka_clients"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


SOURCES = _sources()


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def _target(module: str, names: list[str]) -> list[str]:
    """The project modules an import reaches (``from pkg import mod`` reaches pkg.mod)."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in SOURCES]
    return found or ([module] if module in SOURCES else [])


def _layer(module: str) -> int:
    best, depth = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    return best


def _graph() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for module, path in SOURCES.items():
        for line, imported, names in _imports(path):
            for target in _target(imported, names):
                if target != module:
                    graph[module].setdefault(target, line)
    return graph


def test_every_module_has_a_layer() -> None:
    assert [m for m in SOURCES if _layer(m) < 0] == []


def test_layers_run_one_way() -> None:
    upward = [f"{SOURCES[m].relative_to(ROOT)}:{line} imports {t} ({LAYERS[_layer(t)][0]} is above {LAYERS[_layer(m)][0]})"
              for m, targets in _graph().items() for t, line in targets.items() if _layer(t) > _layer(m)]
    assert upward == []


def test_no_import_circles() -> None:
    graph, circles, state = _graph(), [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, {}):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(SOURCES):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_pyflink_only_in_the_stream_job() -> None:
    users = {m for m, p in SOURCES.items() for _, imported, _ in _imports(p) if imported.split(".")[0] == "pyflink"}
    assert users <= PYFLINK_MODULES


def test_models_do_not_import_the_app() -> None:
    app = [f"{m} imports {t}" for m, targets in _graph().items() if m.startswith("models")
           for t in targets if not (t.startswith("models") or t == "streaming.events")]
    assert app == []


def test_no_private_names_across_packages() -> None:
    leaks = [f"{SOURCES[m].relative_to(ROOT)}:{line} takes {name} from {imported}"
             for m, p in SOURCES.items() for line, imported, names in _imports(p)
             if imported.split(".")[0] in PACKAGES and imported.split(".")[0] != m.split(".")[0]
             for name in names if name.startswith("_")]
    assert leaks == []


@pytest.mark.parametrize("folder", ["streaming", "models", "infra", "features", "batch", "serving", "bench", "tests"])
def test_kafka_clients_come_from_the_factory(folder: str) -> None:
    # tests/data holds scripts that run against older commits, which have no factory
    direct = [f"{p.relative_to(ROOT)}:{node.lineno}" for p in (ROOT / folder).rglob("*.py")
              if _module_name(p) != KAFKA_FACTORY and (ROOT / "tests" / "data") not in p.parents for node in ast.walk(ast.parse(p.read_text()))
              if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
              in {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}]
    assert direct == []


def test_the_factory_gives_every_client_the_security_settings() -> None:
    from infra import kafka_clients
    from infra.settings import Settings

    s = Settings(broker={"bootstrap_servers": "k1:9093,k2:9093", "security_protocol": "SASL_SSL",
                         "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc", "sasl_password": "pw",
                         "ssl_cafile": "/etc/ca.pem", "ssl_check_hostname": False})
    config = kafka_clients.client_config(s, "dlq")
    assert config == {"bootstrap_servers": "k1:9093,k2:9093", "client_id": "recsys-dlq", "security_protocol": "SASL_SSL",
                      "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc", "sasl_plain_password": "pw",
                      "ssl_check_hostname": False, "ssl_cafile": "/etc/ca.pem"}
    java = kafka_clients.java_properties(s)
    assert java["security.protocol"] == "SASL_SSL" and java["sasl.mechanism"] == "SCRAM-SHA-512"
    assert 'ScramLoginModule required username="svc" password="pw";' in java["sasl.jaas.config"]
    assert java["ssl.truststore.location"] == "/etc/ca.pem" and java["ssl.endpoint.identification.algorithm"] == ""
    plain = kafka_clients.client_config(Settings(), "x")
    assert set(plain) == {"bootstrap_servers", "client_id", "security_protocol"}


def test_the_stream_job_reads_the_broker_through_the_factory() -> None:
    from infra.settings import Settings
    from streaming.job.feature_job import source_ddl

    ddl = source_ddl(Settings(broker={"security_protocol": "SASL_PLAINTEXT", "sasl_username": "svc",
                                      "sasl_password": "it's"}))
    assert "'properties.security.protocol' = 'SASL_PLAINTEXT'" in ddl and "'properties.sasl.mechanism' = 'PLAIN'" in ddl
    assert "password=\"it''s\"" in ddl  # quoted for SQL


@pytest.mark.parametrize("package", sorted({m for m, p in SOURCES.items() if p.name == "__init__.py"}))
def test_each_package_lists_its_public_modules(package: str) -> None:
    """A newcomer reads a package's ``__init__``: its docstring says what it owns, and every public
    module and sub-package in it is either named in ``__all__`` or reached from the names the
    package exports (``infra.cli``'s command areas); a module added without either fails here."""
    folder = SOURCES[package].parent
    tree = ast.parse(SOURCES[package].read_text())
    assert ast.get_docstring(tree), f"{package}/__init__.py needs a one-line docstring saying what it owns"
    listed = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and any(getattr(t, "id", None) == "__all__" for t in n.targets)), None)
    assert listed, f"{package}/__init__.py needs an __all__"
    graph, reached, todo = _graph(), set(), [package, *(f"{package}.{n}" for n in listed)]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += [t for t in graph.get(module, {}) if t.startswith(package + ".")]
    public = {f"{package}.{p.stem}" for p in folder.glob("*.py") if not p.stem.startswith("_")} | {
        f"{package}.{d.name}" for d in folder.iterdir() if (d / "__init__.py").is_file()}
    assert sorted(public - reached) == []
