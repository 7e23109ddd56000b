"""Consumer actors drive Ray's autoscaler: nodes are added for them and removed when they go.

The cluster is Ray's fake multi-node provider (real raylets on this machine), standing in for KubeRay,
whose autoscaler follows the same logical resource demand.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import active_nodes
from tests.support.pipeline import account, committed, fill, pipeline_env, start_main, stop_group, wait_until
from tests.support.services import Endpoints


def test_consumers_bring_nodes_up_and_their_end_brings_them_down(
    endpoints: Endpoints, topic_name: str, autoscaling_cluster: str, tmp_path: Path
) -> None:
    # Few messages are enough: the head has no CPU, so nothing is consumed before both nodes are up.
    messages = 10_000
    fill(endpoints, topic_name, messages, partitions=6)
    env = pipeline_env(endpoints, topic_name, actor_num_cpus=1, min_actors=2, max_actors=2, scale_catchup_s=0)
    env["RAY_ADDRESS"] = autoscaling_cluster
    log = tmp_path / "main.log"
    assert active_nodes(autoscaling_cluster, "consumers") == 0
    process = start_main(env, "--exit-when-drained", log=log)
    try:
        # The head has no CPU: each consumer (num_cpus=1) needs a node of its own.
        wait_until(lambda: active_nodes(autoscaling_cluster, "consumers") == 2, 180, "two consumer nodes")
        assert process.wait(600) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    assert account(endpoints, topic_name).exact
    assert committed(endpoints, topic_name) == messages
    wait_until(lambda: active_nodes(autoscaling_cluster, "consumers") == 0, 120, "idle nodes to be removed")
