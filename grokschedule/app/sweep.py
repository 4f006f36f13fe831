"""``grokschedule sweep SPEC.yaml [--dry-run] [--address ADDR]``: run the sweep a spec describes.

``grokschedule sweep --schema`` prints the spec format's JSON Schema, for editors.

Order of events, so that mistakes cost seconds, not a cluster's worth of GPU time: read and
check the whole spec; connect to Ray; check that some node (or node type the autoscaler reports)
can host a trial; only then start Tune. ``--dry-run`` stops before Tune, and checks the spec
alone when there is no cluster to join (it starts none).

Which Ray cluster: ``--address`` if given; else ``RAY_ADDRESS`` (``ray job submit`` and KubeRay
RayJobs set it to the job's own cluster); else the cluster ``ray start`` last started on this
machine (on a head node, e.g. under ``ray submit``); else a new local cluster that ends with the
command. This is ``ray.init()``'s own lookup, minus its fallback of joining any Ray process it
finds. ``--address local`` forces a private local cluster even where another one runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ray

from grokschedule.adapters import ray_compat
from grokschedule.app.runner import run_sweep, use_local_train_settings
from grokschedule.app.spec import (
    ClusterView,
    SpecError,
    SweepSpec,
    check_fits,
    load_spec,
    spec_schema,
)


def sweep_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grokschedule sweep", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, nargs="?", help="the sweep spec (YAML); see sweeps/")
    parser.add_argument(
        "--schema",
        action="store_true",
        help="print the JSON Schema of a spec file (for editors' YAML support) and exit",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the spec (and the cluster, if any); run nothing",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster: host:port, 'auto' or 'local' (default: $RAY_ADDRESS, else the cluster "
        "`ray start` started on this machine, else a new local one)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.schema:
        print(json.dumps(spec_schema(), indent=2))
        return 0
    if args.spec is None:
        parser.error("give a spec file (or --schema)")
    started = time.monotonic()
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(f"grokschedule sweep: {e}", file=sys.stderr)
        return 2
    print(describe(spec))
    joining = ray_compat.bootstrap_address(args.address) is not None
    if args.dry_run and not joining:
        print("Dry run: the spec is valid (no cluster to check its resources against).")
        return 0
    # Trial stdout (Ray's checkpoint chatter) stays in the trial logs; the console shows decisions.
    # A cluster of our own needs no dashboard (and takes no port another cluster here may hold).
    local = {} if joining else {"include_dashboard": False}
    if not joining:
        use_local_train_settings()
    ray.init(address=args.address, log_to_driver=False, **local)
    try:
        view = cluster_view(autoscaled=joining)
        how = "joined" if joining else "started"
        address = ray.get_runtime_context().gcs_address
        print(f"Ray: {how} a cluster of {len(view.nodes)} node(s) at {address}")
        try:
            warning = check_fits(spec.resources, view)
        except SpecError as e:
            print(f"grokschedule sweep: {SpecError(e.problems, spec.source)}", file=sys.stderr)
            return 2
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        if args.dry_run:
            print("Dry run: the spec is valid and the cluster can host its trials.")
            return 0
        outcome = run_sweep(spec.settings())
    finally:
        ray.shutdown()
    print("\n=== grokschedule sweep: summary ===")
    print(outcome.summary.render(outcome.names))
    errors = outcome.results.errors
    for error in errors:
        print(f"trial failed: {error}", file=sys.stderr)
    print(f"Wall time: {time.monotonic() - started:.0f} s")
    print(f"Tune experiment: {outcome.experiment_path}")
    print(f"Review the runs:  mlflow ui --backend-store-uri {outcome.tracking_uri}")
    return 1 if errors else 0


def describe(spec: SweepSpec) -> str:
    """One screen that says what will run where, before it runs."""
    bundles = ", ".join(
        "{" + ", ".join(f"{k}: {v:g}" for k, v in b.items()) + "}" for b in spec.resources.bundles
    )
    placement = (
        bundles if len(spec.resources.bundles) == 1 else f"[{bundles}] {spec.resources.strategy}"
    )
    return "\n".join(
        [
            f"Sweep {spec.source}: trainable {spec.trainable_name}, {spec.num_samples} sample(s)"
            f" of the search space, max {spec.max_concurrent_trials or 'unlimited'} concurrent",
            f"  per trial: {placement}",
            f"  scheduler: {json.dumps(spec.scheduler, default=str)}",
            f"  storage:   {spec.storage_path}",
            f"  MLflow:    {spec.tracking_uri or 'sqlite under storage'}, experiment "
            f"{spec.experiment!r}",
        ]
    )


def cluster_view(autoscaled: bool) -> ClusterView:
    """The connected cluster's node shapes. An autoscaler v2 (KubeRay) reports the node types it
    can add; a v1 one (``ray up``) only shows its node type names, so a cluster whose nodes are
    not all anonymous "readonly" nodes is taken to autoscale into shapes the driver cannot see.
    A cluster this command started itself has no autoscaler."""
    nodes = tuple(node["Resources"] for node in ray.nodes() if node["Alive"])
    node_types = ray_compat.autoscaler_node_types()
    opaque = False
    if autoscaled and not node_types:
        mapping = ray_compat.autoscaler_node_type_mapping()
        opaque = any(kind != ray_compat.readonly_node_type(key) for key, kind in mapping.items())
    return ClusterView(nodes=nodes, node_types=node_types, opaque_autoscaler=opaque)


if __name__ == "__main__":
    raise SystemExit(sweep_main())
