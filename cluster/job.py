"""The entry point ``ray job submit`` runs: disktrain's CLI inside the job's Ray cluster.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m disktrain.cluster.job train /data/papers --workers 4 --epochs 10
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m disktrain.cluster.job prepare /data/papers ...

``python -m disktrain.cluster.job COMMAND ARGS...`` connects to the cluster the job runs in
(``ray.init(address="auto")``: the job supervisor sets RAY_ADDRESS) and runs ``disktrain
COMMAND ARGS...``; for the commands that use Ray (train, prepare) it adds ``--ray-address
auto`` unless ARGS name an address, so their work goes to the cluster's workers (a dataset
on object storage too: every node stages it and writes to it). The job's
bare ``python`` is the one on the head's PATH: start the head from the environment where
disktrain is installed, or name that interpreter.

disktrain must be installed on every node. With ``--working-dir .`` the uploaded checkout's
``disktrain/`` shadows the installed package but has no ``cluster/`` (it is mapped to
``disktrain.cluster`` at install time), so ``disktrain.cluster`` is then found only through
an editable install (``pip install -e``, as cluster/example-cluster.yaml does); with a
regular install, submit without ``--working-dir .``.
"""

from __future__ import annotations

import sys

from .head import init_ray

RAY_COMMANDS = ("train", "prepare")
"""Subcommands that take ``--ray-address``."""


def job_argv(argv: list[str]) -> list[str]:
    """The ``disktrain`` arguments a job runs: ``argv`` plus ``--ray-address auto`` for
    the commands that use Ray, unless it names an address already."""
    if not argv:
        raise ValueError("usage: python -m disktrain.cluster.job COMMAND [ARGS...] "
                         f"(COMMAND: a disktrain subcommand, e.g. {' or '.join(RAY_COMMANDS)})")
    command, *rest = argv
    named = any(a == "--ray-address" or a.startswith("--ray-address=") for a in rest)
    if command in RAY_COMMANDS and not named:
        rest += ["--ray-address", "auto"]
    return [command, *rest]


def main(argv: list[str] | None = None) -> int:
    """Connect to the job's cluster and run ``disktrain`` with the job's arguments."""
    try:
        args = job_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    init_ray("auto")
    from disktrain.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
