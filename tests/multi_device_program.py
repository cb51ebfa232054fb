"""Run by tests/test_steps.py in a subprocess with two forced CPU devices: two train steps on
one device and on a 2-device mesh must give the same parameters. Prints one JSON line."""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(root: str) -> None:
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as Spec

    from tests.configs import tiny
    from tests.helpers import first_batch, setup_step
    from voc_jax import distributed
    from voc_jax.data.voc import load_dataset

    records = load_dataset(root, "trainval").records
    config = tiny.get_config()
    config.images_per_step = 2
    config.patches.crops = "device"  # the accelerators' path: images sharded, cropped per device
    batch = first_batch(config, records)
    out = {}
    for n in (1, 2):
        mesh = jax.make_mesh(
            (n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n]
        )
        _, state, step, _ = setup_step(config)
        state = jax.device_put(state, NamedSharding(mesh, Spec()))
        b = distributed.global_batch(batch, NamedSharding(mesh, Spec("data")))
        for _ in range(2):
            state, _ = step(state, b)
        out[n] = jax.tree.map(np.asarray, state.params)
        assert len(b["image"].sharding.device_set) == n
    diffs = [
        float(np.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(out[2]), strict=True)
    ]
    print(json.dumps({"devices": jax.device_count(), "max_diff": max(diffs)}))


if __name__ == "__main__":
    main(sys.argv[1])
