"""Ray's private APIs, which grokschedule reaches only through grokschedule.adapters.ray_compat.

After a Ray upgrade, the first test names each private symbol that is gone, with the installed
Ray version; the module list is read from ray_compat's own import statements, so this file is
never out of date with it and does not need it to import.
"""

from __future__ import annotations

import ast
import importlib
import os
import time
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / "grokschedule" / "adapters" / "ray_compat.py"
TREE = ast.parse(COMPAT.read_text())
CHECKED_ON = next(
    node.value.value
    for node in TREE.body
    if isinstance(node, ast.Assign)
    and isinstance(node.value, ast.Constant)
    and [getattr(target, "id", None) for target in node.targets] == ["CHECKED_ON"]
)
# Every (module, name) ray_compat takes from Ray, at module level or inside a function.
SYMBOLS = sorted(
    (node.module, alias.name)
    for node in ast.walk(TREE)
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray"
    for alias in node.names
)


def _is_private(module: str, names: list[str]) -> bool:
    return any(part.startswith("_") for part in [*module.split("."), *names])


@pytest.mark.parametrize(("module", "name"), SYMBOLS, ids=[f"{m}.{n}" for m, n in SYMBOLS])
def test_ray_still_has_every_symbol_ray_compat_uses(module: str, name: str) -> None:
    try:
        owner = importlib.import_module(module)
        if not hasattr(owner, name):  # a submodule (`from ray._private import services`)
            importlib.import_module(f"{module}.{name}")
    except ImportError as e:
        pytest.fail(
            f"{module}.{name} is gone in Ray {ray.__version__} (grokschedule.adapters.ray_compat "
            f"was checked on Ray {CHECKED_ON}): {e}. Find where Ray moved it and update "
            "ray_compat.py (and its 'checked on' notes)",
            pytrace=False,
        )


def test_ray_compat_is_the_only_importer_of_private_ray() -> None:
    offenders = []
    for path in sorted(ROOT.glob("**/*.py")):
        relative = path.relative_to(ROOT)
        if path == COMPAT or relative.parts[0].startswith(".") or "site-packages" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray"):
                found = node.module, [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                found = next(
                    ((a.name, []) for a in node.names if a.name.split(".")[0] == "ray"), None
                )
            else:
                continue
            if found and found[0].split(".")[0] == "ray" and _is_private(*found):
                offenders.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "import these through grokschedule.adapters.ray_compat:\n" + "\n".join(
        offenders
    )


def test_ray_compat_helpers_answer_without_a_cluster() -> None:
    from grokschedule.adapters import ray_compat

    assert ray_compat.bootstrap_address("local") is None
    assert ray_compat.bootstrap_address("10.0.0.5:6379") == "10.0.0.5:6379"
    assert ray_compat.readonly_node_type("abc") == "node_abc"
    assert (
        ray_compat.WORKER_GROUP_START_TIMEOUT_S_ENV_VAR == "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
    )
    assert ray_compat.get_trial_state("anything") is None  # no trial session in the driver
    with pytest.raises(RuntimeError, match="inside a Tune trial"):
        ray_compat.set_trial_state("key", 1)


def test_every_name_ray_compat_exports_resolves() -> None:
    """The ``ray.train`` names load on first use (``ray_compat.__getattr__``) from a table: each
    entry must be one of the imports the symbol test above checks, and resolve."""
    from grokschedule.adapters import ray_compat

    lazy = {(module, name) for name, module in ray_compat._FROM_RAY_TRAIN.items()}
    assert lazy <= set(SYMBOLS)
    for name in ray_compat.__all__:
        assert getattr(ray_compat, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ray_compat.Nope  # noqa: B018


def test_ray_compat_helpers_on_a_local_cluster(local_ray: None) -> None:
    from grokschedule.adapters import ray_compat

    # A local cluster: no v2 node types; the v1 monitor, if it reported yet, calls each node by
    # its anonymous readonly type (what `grokschedule sweep` takes for "no autoscaler").
    assert ray_compat.autoscaler_node_types() == ()
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    mapping = ray_compat.autoscaler_node_type_mapping()
    assert set(mapping) <= alive
    assert all(kind == ray_compat.readonly_node_type(node) for node, kind in mapping.items())

    @ray.remote(num_cpus=0, resources={ray_compat.HEAD_NODE_RESOURCE_NAME: 0.001})
    class Probe:
        def actor_id(self) -> str:
            return ray.get_runtime_context().get_actor_id()

    probe = Probe.remote()
    actor_id = ray.get(probe.actor_id.remote(), timeout=30)  # placed: the head has that resource
    assert ray_compat.actor_state(actor_id) == "ALIVE"
    ray.kill(probe)
    deadline = time.monotonic() + 10
    while ray_compat.actor_state(actor_id) != "DEAD" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_compat.actor_state(actor_id) == "DEAD"
    assert ray_compat.actor_state("ff" * 16) is None

    address = ray.get_runtime_context().gcs_address
    assert "Plasma memory usage" in ray_compat.object_store_stats(address)


def test_ray_train_still_reads_the_settings_the_demo_makes() -> None:
    """``LOCAL_TRAIN_ENV`` only helps while Ray Train reads those names: an upgrade that renames
    one would silently undo it."""
    from grokschedule.app.runner import LOCAL_TRAIN_ENV

    train = Path(ray.__file__).parent / "train" / "v2"
    source = "\n".join(path.read_text() for path in train.rglob("*.py"))
    for name in LOCAL_TRAIN_ENV:
        assert f'"{name}"' in source, f"Ray Train no longer reads {name}"


def test_local_train_settings_leave_a_value_already_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from grokschedule.app.runner import LOCAL_TRAIN_ENV, use_local_train_settings

    first, second = LOCAL_TRAIN_ENV
    monkeypatch.setenv(first, "1")
    monkeypatch.delenv(second, raising=False)
    use_local_train_settings()
    assert os.environ[first] == "1" and os.environ[second] == LOCAL_TRAIN_ENV[second]
