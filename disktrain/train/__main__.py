"""``python -m disktrain.train DATASET ...``: ``disktrain train``, in the form torchrun launches.

One machine, two processes::

    torchrun --nproc_per_node=2 -m disktrain.train DATASET --model sage --epochs 1

Several machines (run on each, with its own ``--node_rank``)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HEAD \\
        --master_port=29500 -m disktrain.train /shared/DATASET --epochs 10

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; :func:`disktrain.train.train` reads them.
"""

import sys

from disktrain.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
