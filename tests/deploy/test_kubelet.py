"""The kubelet check: the chart and the image fit each other.

For each value set: render the chart, take the server Deployment's container as rendered (image,
args, env with its Secret references resolved, the ConfigMap written out and mounted where the
pod mounts it, ports, security context), run the built image with runc exactly that way, run the
startup, liveness and readiness probes as the kubelet does (a gRPC Health/Check on the probe's
port and service, every periodSeconds, up to failureThreshold), then terminate it as a rollout
does: the preStop hook, SIGTERM, and the pod's grace period. Readiness must turn NOT_SERVING while
the process still runs and drains, and the drain must end in a clean exit within the grace period.
"""

import base64
import json
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness import (
    Container,
    ContainerSpec,
    find,
    free_port,
    grpc_probe,
    redis_server,
    render,
    run_probe,
    value_sets,
    wait_for,
)

SETS = value_sets()
PASSWORD = SETS["secured"]["redis"]["password"]
USER = SETS["secured"]["redis"]["username"]


def merge(base: dict, over: dict) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def container_spec(docs: list[dict], secrets: dict, tmp_path, image) -> tuple[ContainerSpec, dict, dict]:
    """The runc spec of the server container exactly as the rendered pod describes it."""
    pod = find(docs, "Deployment", "rel-tiercache")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # The pod runs the image we built.
    labels = image.config.get("annotations", {})
    version = labels.get("org.opencontainers.image.version")
    assert c["image"] == f"tiercache:{version}", (c["image"], version)
    assert "command" not in c, "the pod keeps the image's entrypoint"
    # What runc enforces must be what the pod asks for.
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    rendered_secrets = {
        d["metadata"]["name"]: {
            **d.get("stringData", {}),
            **{k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()},
        }
        for d in docs
        if d["kind"] == "Secret"
    }
    all_secrets = {**secrets, **rendered_secrets}
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = all_secrets[ref["name"]][ref["key"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = []
    for m in c["volumeMounts"]:
        cm = find(docs, "ConfigMap", volumes[m["name"]]["configMap"]["name"])
        folder = tmp_path / m["name"]
        folder.mkdir()
        for key, text in cm["data"].items():
            (folder / key).write_text(text)
        assert m.get("readOnly")
        mounts.append((folder, m["mountPath"]))
    spec = ContainerSpec(
        args=c["args"],
        env=env,
        mounts=mounts,
        uid=sc.get("runAsUser", pod["securityContext"]["runAsUser"]),
        gid=sc.get("runAsGroup", pod["securityContext"]["runAsGroup"]),
    )
    return spec, c, pod


class ReadinessWatch:
    """A held connection watching the readiness probe's health service, recording each status
    with whether the container was still running when it arrived."""

    def __init__(self, port: int, service: str, container: Container):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(self.channel)
        self.call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self.seen: list[tuple[float, str, bool]] = []
        self.thread = threading.Thread(target=self._run, args=(container,), daemon=True)
        self.thread.start()

    def _run(self, container):
        try:
            for reply in self.call:
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                self.seen.append((time.monotonic(), name, container.running()))
        except grpc.RpcError:
            pass

    def statuses(self) -> list[str]:
        return [s for _, s, _ in self.seen]

    def close(self):
        self.call.cancel()
        self.thread.join(timeout=5)
        self.channel.close()


# Every value set: each renders a different server config, and the server rejects unknown fields.
KUBELET_SETS = ["default", "ha", "secured", "external-redis", "memory-only"]


@pytest.mark.parametrize("name", KUBELET_SETS)
def test_kubelet_runs_the_rendered_pod(image, name, tmp_path):
    grpc_port, admin_port = free_port(), free_port()
    over = {"server": {"grpcPort": grpc_port, "adminPort": admin_port, "preStopDelaySeconds": 2,
                       "shutdownGraceSeconds": 5}}
    secrets, redis, redis_auth = {}, None, []
    if name == "secured":
        # The Redis ACL user of the value set, with its password: the URL reaches the server
        # only through the chart's Secret.
        redis, port = redis_server()
        subprocess.run(["redis-cli", "-p", str(port), "ACL", "SETUSER", USER, "on", f">{PASSWORD}",
                        "~*", "&*", "+@all"], check=True, capture_output=True)
        subprocess.run(["redis-cli", "-p", str(port), "ACL", "SETUSER", "default", "off"],
                       check=True, capture_output=True)
        over["redis"] = {"url": f"redis://127.0.0.1:{port}"}
        redis_auth = ["--user", USER, "--pass", PASSWORD]
    elif name == "external-redis":
        redis, port = redis_server()
        ext = SETS[name]["redis"]
        secrets[ext["existingSecret"]] = {ext["existingSecretKey"]: f"redis://127.0.0.1:{port}"}
    elif name in ("default", "ha"):
        # The in-chart dev Redis and the cluster's Redis are not reachable here: a local one
        # stands in through redis.url (which replaces the dev Redis in the default set).
        redis, port = redis_server()
        over["redis"] = {"url": f"redis://127.0.0.1:{port}"}
        if name == "ha":
            # Nothing listens there; the exporter must not keep the server from starting.
            over["config"] = {"telemetry": {"otlpEndpoint": f"http://127.0.0.1:{free_port()}"}}
    values = merge(SETS[name], over)
    docs = render(values)
    spec, c, pod = container_spec(docs, secrets, tmp_path, image)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc"] == grpc_port == c["startupProbe"]["grpc"]["port"]
    grace = pod["terminationGracePeriodSeconds"]
    container = Container(image, spec)
    watch = None
    try:
        # Start-up, then liveness and readiness, each the kubelet's way.
        started = run_probe("startupProbe", c["startupProbe"])
        run_probe("livenessProbe", c["livenessProbe"])
        run_probe("readinessProbe", c["readinessProbe"])
        assert started < 10, f"startup took {started:.1f}s"
        # It serves: a Set and a Get through the image's own client.
        addr = f"http://127.0.0.1:{grpc_port}"
        r = container.exec("tiercache", "set", "kubelet:k", name, "--addr", addr)
        assert r.returncode == 0, r.stderr + container.output()
        r = container.exec("tiercache", "get", "kubelet:k", "--addr", addr)
        assert (r.returncode, r.stdout.strip()) == (0, name), r.stderr
        if redis is not None:
            # The value reached the shared tier: the Redis URL (from the Secret) works.
            keys = subprocess.run(["redis-cli", "-p", str(port), *redis_auth, "--no-auth-warning", "DBSIZE"],
                                  capture_output=True, text=True, check=True).stdout
            assert int(keys) > 0, keys
            assert grpc_probe(grpc_port, "tiercache.redis", 2) == "SERVING"
        if "metrics" in ports:
            body = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).read()
            assert b"tiercache" in body
        else:
            assert json.loads(json.dumps(values))["config"]["telemetry"]["metrics"] is False

        # Termination as in a rollout: preStop first, then SIGTERM, within the grace period.
        readiness = c["readinessProbe"]["grpc"]
        watch = ReadinessWatch(grpc_port, readiness["service"], container)
        wait_for("readiness watch", lambda: watch.statuses() == ["SERVING"])
        t0 = time.monotonic()
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        r = container.exec(*pre_stop, timeout=grace)
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 >= values["server"]["preStopDelaySeconds"]
        # Endpoints had the preStop delay to drop the pod; it still served all along.
        assert watch.statuses() == ["SERVING"]
        assert grpc_probe(grpc_port, readiness["service"], 2) == "SERVING"
        t_term = time.monotonic()
        container.signal("TERM")
        # Readiness drops first: NOT_SERVING while the process still runs.
        wait_for("readiness NOT_SERVING", lambda: "NOT_SERVING" in watch.statuses(), timeout=5)
        t_unready, status, running = watch.seen[-1]
        assert (status, running) == ("NOT_SERVING", True)
        # A new readiness probe fails now (NOT_SERVING or refused): the kubelet marks it unready.
        assert grpc_probe(grpc_port, readiness["service"], 1) != "SERVING"
        # The drain waits for the in-flight call (the watch stream itself)...
        time.sleep(1)
        assert container.running(), "the server must drain in-flight calls, not drop them"
        # ...and ends as soon as it is done: a clean exit well within the grace period.
        t_close = time.monotonic()
        watch.close()
        watch = None
        code = container.wait(timeout=max(1, grace - (time.monotonic() - t0)))
        t_exit = time.monotonic()
        total = t_exit - t0
        out = container.output()
        assert code == 0, out
        assert total < grace, f"took {total:.1f}s of a {grace}s grace period"
        assert "stopped" in out and "grace period passed" not in out, out
        print(f"\n{name}: startup probe ok after {started:.2f}s; preStop {t_term - t0:.2f}s; "
              f"NOT_SERVING {1000 * (t_unready - t_term):.0f}ms after SIGTERM; exit {code} "
              f"{1000 * (t_exit - t_close):.0f}ms after the last call ended; {total:.2f}s of {grace}s grace")
    finally:
        if watch is not None:
            watch.close()
        container.stop()
        if redis is not None:
            redis.terminate()
            redis.wait()
