"""The chart, offline: Helm's lint (strict) and render through Helm's Go SDK (helm-python-sdk),
every manifest validated against the Kubernetes schemas of 1.27 and of the newest version
kubernetes-validate bundles, and values.schema.json checked and shown to reject bad values."""

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import jsonschema  # check-jsonschema's dependency
import kubernetes_validate
import pytest
import yaml

import harness
from harness import CHART, INSECURE, ROOT, find, value_sets

SETS = value_sets()
SCHEMA = CHART / "values.schema.json"
BIN = Path(sys.executable).parent


def bundled_versions() -> list[str]:
    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    versions = [p.name.removeprefix("v").removesuffix("-local-strict") for p in folder.glob("v*-local-strict")]
    return sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


KUBE_VERSIONS = ["1.27.0", bundled_versions()[-1]]


def render(values: dict | None = None) -> list[dict]:
    """Renders the chart; values that say nothing of auth get auth.allowInsecure, the one choice
    the chart requires (test_refuses_to_render_without_auth shows the refusal)."""
    values = values or {}
    if "auth" not in values:
        values = {**INSECURE, **values}
    return harness.render(values)


def test_value_sets_cover_the_issue():
    assert {"default", "ha", "secured", "external-redis", "memory-only"} <= set(SETS)


@pytest.mark.parametrize("name", sorted(SETS))
def test_lint_strict(name):
    report = helm.lint(str(CHART), SETS[name], strict=True, namespace="cache", kube_version="v1.27.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, json.dumps(report, indent=1)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(SETS))
def test_manifests_validate(name, version):
    docs = render(SETS[name])
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD kind: no bundled schema. Checked by test_service_monitor_scrapes_the_service
            # and test_prometheus_rule_validates.
            continue
        try:
            used = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {path}: {e.message}")
        assert used == version.rsplit(".", 1)[0]
        checked += 1
    assert checked >= 5


def test_default_render():
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 2  # the server and the dev Redis
    dep = find(docs, "Deployment", "rel-tiercache")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["grpc"]["service"] == "tiercache.v1.CacheService"
    assert c["startupProbe"]["grpc"]["service"] == "" and c["livenessProbe"]["grpc"]["service"] == ""
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] > 5 + 10
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["resources"]["limits"]["memory"]
    assert "checksum/config" in dep["spec"]["template"]["metadata"]["annotations"]
    svc = find(docs, "Service", "rel-tiercache")
    assert svc["spec"]["ports"][0]["appProtocol"] == "grpc"
    dash = find(docs, "ConfigMap", "rel-tiercache-dashboards")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dash["data"]["tiercache.json"])
    test_pod = find(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["args"][0] == "health"
    redis = find(docs, "Deployment", "rel-tiercache-redis")
    assert redis["spec"]["template"]["spec"]["containers"][0]["image"].startswith("redis:")


def test_config_change_rolls_the_pods():
    def checksum(values):
        dep = find(render(values), "Deployment", "rel-tiercache")
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"config": {"defaults": {"default_ttl": "1m"}}})


def test_ha_set():
    docs = render(SETS["ha"])
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in find(docs, "Deployment")["spec"]
    assert find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert find(docs, "Service", "rel-tiercache-headless")["spec"]["clusterIP"] == "None"
    find(docs, "NetworkPolicy")


def test_service_monitor_scrapes_the_service():
    docs = render(SETS["ha"])
    sm = find(docs, "ServiceMonitor")
    svc = find(docs, "Service", "rel-tiercache")
    assert sm["spec"]["endpoints"][0]["port"] in [p["name"] for p in svc["spec"]["ports"]]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


# --- the PrometheusRule (alerts/tiercache-alerts.yaml) ----------------------------------------------

ALERTS_FILE = CHART / "alerts" / "tiercache-alerts.yaml"
RULE_VALUES = {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}}
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
# The PrometheusRule kind (monitoring.coreos.com/v1) as the Prometheus Operator's CRD defines its
# spec, made strict like kubernetes-validate --strict: no property the CRD does not know.
PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"groups": {"type": "array", "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "interval": {"type": "string", "pattern": DURATION},
            "limit": {"type": "integer"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "rules": {"type": "array", "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["expr"],
                "properties": {
                    "alert": {"type": "string"},
                    "record": {"type": "string"},
                    "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "for": {"type": "string", "pattern": DURATION},
                    "keep_firing_for": {"type": "string", "minLength": 1, "pattern": DURATION},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            }},
        },
    }}},
}


def test_prometheus_rule_is_opt_in():
    assert not [d for d in render() if d["kind"] == "PrometheusRule"]
    assert [d for d in render(SETS["ha"]) if d["kind"] == "PrometheusRule"]


def test_prometheus_rule_carries_the_plain_rules_file():
    rule = find(render(RULE_VALUES), "PrometheusRule", "rel-tiercache")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == {"groups": yaml.safe_load(ALERTS_FILE.read_text())["groups"]}
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len(alerts) >= 8, alerts
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            assert r["for"] and r["labels"]["severity"] in ("warning", "critical"), r
            assert {"summary", "description", "runbook_url"} <= set(r["annotations"]), r
            # Every runbook link points to a heading of docs/observability.md.
            anchor = r["annotations"]["runbook_url"].removeprefix("docs/observability.md#")
            assert anchor == r["alert"].lower(), r["annotations"]["runbook_url"]
    doc = (ROOT / "docs" / "observability.md").read_text()
    headings = {h.lower() for h in re.findall(r"^#+ (\w+)$", doc, re.M)}
    assert {a.lower() for a in alerts} <= headings, sorted({a.lower() for a in alerts} - headings)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_prometheus_rule_validates(version, tmp_path):
    rule = find(render(RULE_VALUES), "PrometheusRule")
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    # The metadata is a Kubernetes ObjectMeta: kubernetes-validate --strict checks it on a kind it
    # bundles a schema for (the CRD's own kind has none).
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": rule["metadata"]}
    kubernetes_validate.validate(carrier, version, strict=True)
    jsonschema.validate(rule["spec"], PROMETHEUS_RULE_SPEC)
    # And Prometheus itself parses the rules (PromQL, templates).
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    if not shutil.which("promtool"):
        pytest.fail("promtool missing: sudo apt-get install -y prometheus (or make setup)")
    r = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheus_rule_extra_rules_and_runbook_base():
    base = "https://git.example.com/tiercache/blob/main/docs/observability.md"
    extra = [{"alert": "TiercacheDown", "expr": 'up{job="rel-tiercache"} == 0', "for": "5m",
              "labels": {"severity": "critical"}}]
    rule = find(render({"prometheusRule": {"enabled": True, "runbookBaseUrl": base,
                                           "additionalRules": extra}}), "PrometheusRule")
    *shipped, added = rule["spec"]["groups"]
    assert added == {"name": "tiercache-additional", "rules": extra}
    urls = [r["annotations"]["runbook_url"] for g in shipped for r in g["rules"]]
    assert urls and all(u.startswith(base + "#tiercache") for u in urls), urls
    # The spec schema is strict: a label put at the rule's level is refused.
    bad = copy.deepcopy(rule["spec"])
    bad["groups"][0]["rules"][0]["severity"] = "page"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, PROMETHEUS_RULE_SPEC)


# --- the Grafana dashboard (dashboards/tiercache.json) ---------------------------------------------

DASHBOARD = CHART / "dashboards" / "tiercache.json"


def dashboard_targets() -> list[tuple[dict, dict]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p, t) for p in board["panels"] for t in p["targets"]]


def test_dashboard_selects_tiercaches_own_series():
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] == 39
    names = [v["name"] for v in board["templating"]["list"]]
    assert len(names) == len(set(names)), names  # one variable per name
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "job", "instance", "namespace"} <= set(variables)
    assert variables["instance"]["multi"] and "$job" in variables["instance"]["query"]["query"]
    assert "$instance" in variables["namespace"]["query"]["query"]
    targets = dashboard_targets()
    assert len(targets) >= 20
    for panel, target in targets:
        expr = target["expr"]
        # Every selector of every query (each metric{...}) names the scope, the job and the instance.
        selectors = re.findall(r"\b([a-z_0-9]+)\{([^}]*)\}", expr)
        assert selectors, expr
        for metric, labels in selectors:
            assert 'otel_scope_name="tiercache"' in labels, (panel["title"], metric)
            assert 'job=~"$job"' in labels and 'instance=~"$instance"' in labels, (panel["title"], metric)
        # Panels that do not filter by namespace say so.
        if "$namespace" not in expr:
            assert "Ignores $namespace" in panel["description"], panel["title"]


def test_dashboard_degraded_mode_maps_ok_and_degraded():
    board = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in board["panels"] if p["title"] == "Degraded mode"]
    assert panel["type"] == "state-timeline"
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert mapping["type"] == "value"
    assert {k: (v["text"], v["color"]) for k, v in mapping["options"].items()} == {
        "0": ("OK", "green"), "1": ("DEGRADED", "red")}
    assert "by (instance)" in panel["targets"][0]["expr"]


def test_dashboard_l1_views_are_per_instance_and_apart_from_rates():
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p, _ in dashboard_targets()}
    for title, exprs in panels.items():
        for expr in exprs:
            # Every replica has its own L1: its gauges are never summed over replicas, or one
            # replica at its limit would hide (and the budget would double with two).
            summed = r"sum by \((?![^)]*instance)[^)]*\) \(tiercache_l1_(size_bytes|entries|budget)"
            assert not re.search(summed, expr), expr
        if any(re.search(r"tiercache_l1_(size_bytes|entries)\{", e) for e in exprs):
            assert "by (instance, tiercache_namespace)" in exprs[0], title
        # The entries gauge has a panel of its own, without per-second rates.
        if any("tiercache_l1_entries" in e for e in exprs):
            assert not any("rate(" in e for e in exprs), title


def test_dashboard_and_alerts_count_with_the_zero_series_counters():
    rules = {r["alert"]: r["expr"] for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"]
             for r in g["rules"]}
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p, _ in dashboard_targets()}
    for title, exprs in panels.items():
        for expr in exprs:
            # A histogram's _count series appears on its first observation, which rate() then
            # misses: RPCs and Redis errors are counted with counters whose series exist at 0.
            assert "_seconds_count" not in expr, (title, expr)
            # The health check's pings (4/s) stay out of the Redis latency quantiles.
            assert expr.count("db_client_operation_duration_seconds_bucket{") == expr.count(
                'tiercache_redis_operation!="health_check"'), (title, expr)
    assert all("tiercache_redis_errors_total{" in e for e in panels["Redis errors"])
    assert "tiercache_redis_errors_total{" in rules["TiercacheRedisErrors"]
    for alert in ("TiercacheHighErrorRatio", "TiercacheSlowP99"):
        assert "rpc_server_call_duration_seconds_count" not in rules[alert], alert
        assert "tiercache_rpc_requests_total{" in rules[alert], alert
    # One hit ratio (docs/observability.md, "Hit ratio"): hit + stale + filled over all lookups,
    # on the dashboard ("served from cache") and in TiercacheHitRatioDrop.
    served = 'tiercache_result!="miss"'
    (total,) = [e for e in panels["Hit ratio by tier and namespace"] if served in e]
    assert total.count("tiercache_cache_lookups_total{") == 2
    assert total.count("tiercache_result") == 1  # the denominator: every lookup
    drop = rules["TiercacheHitRatioDrop"]
    assert drop.count(served) == 2 and drop.count("tiercache_result") == 2


def test_secrets_stay_out_of_the_configmap():
    docs = render(SETS["secured"])
    secret = find(docs, "Secret")
    password = SETS["secured"]["redis"]["password"]
    # The password alone is in the chart's Secret; the URL carries no credentials any more.
    assert secret["stringData"] == {"redis-password": password}
    toml = find(docs, "ConfigMap", "rel-tiercache")["data"]["tiercache.toml"]
    assert password not in toml
    config = tomllib.loads(toml)
    assert config["redis"]["url"] == "redis://redis.cache-infra.svc:6379"
    assert config["redis"]["username"] == "tiercache"
    env = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "TIERCACHE_REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "rel-tiercache", "key": "redis-password"}}} in env
    assert not [e for e in env if e["name"] == "TIERCACHE_REDIS_URL" or password in json.dumps(e.get("value"))]


def test_existing_secret():
    docs = render(SETS["external-redis"])
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert not [d for d in docs if d["metadata"]["name"] == "rel-tiercache-redis"]
    env = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    ref = next(e for e in env if e["name"] == "TIERCACHE_REDIS_URL")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": SETS["external-redis"]["redis"]["existingSecret"], "key": "url"}



# --- security: auth, TLS, Redis TLS and password (docs/deploy.md, "Security") ---------------------


def pod_of(docs: list[dict]) -> tuple[dict, dict]:
    pod = find(docs, "Deployment", "rel-tiercache")["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def mounted_files(pod: dict, container: dict) -> dict[str, tuple[str, str]]:
    """Every file a Secret volume puts in the container: path -> (Secret name, key)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = {}
    for m in container["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        if secret:
            for item in secret["items"]:
                files[f"{m['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


def test_refuses_to_render_without_auth():
    # The server refuses a non-loopback listen without [auth]; the chart says so before install.
    with pytest.raises(Exception) as e:
        harness.render({})
    message = str(e.value)
    assert "auth.principals" in message and "auth.allowInsecure: true" in message, message


def test_allow_insecure_is_said_in_the_config():
    _, config = rendered_toml(INSECURE)
    assert config["allow_insecure"] is True and "auth" not in config
    # With principals, allowInsecure is not needed and not written.
    _, config = rendered_toml(SETS["secured"])
    assert "allow_insecure" not in config
    assert "reflection" not in config
    _, config = rendered_toml({**SETS["secured"], "auth": {**SETS["secured"]["auth"], "reflection": True}})
    assert config["reflection"] is True


def test_auth_principals_and_tokens_file():
    docs = render(SETS["secured"])
    config = tomllib.loads(find(docs, "ConfigMap", "rel-tiercache")["data"]["tiercache.toml"])
    assert config["auth"]["principals"] == {
        "checkout": {
            "rate_limit": {"per_second": 1000, "burst": 2000},
            "rights": {"checkout*": ["read", "write", "invalidate", "lock"], "default": ["read", "write"]},
        },
        "ops": {"client_cert_names": ["ops.cache.svc"], "rights": {"*": ["read", "admin"]}},
    }
    # tokens_file is the mounted key of auth.tokensSecret.
    pod, c = pod_of(docs)
    files = mounted_files(pod, c)
    assert files[config["auth"]["tokens_file"]] == ("tiercache-tokens", "tokens")
    # Token hashes written in the values land in the principal.
    _, config = rendered_toml(SETS["external-redis"])
    (hashes,) = [p["token_sha256"] for p in config["auth"]["principals"].values()]
    assert hashes == ["2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"]
    assert "tokens_file" not in config["auth"]


def test_secret_volumes_are_apart_from_the_config_and_private():
    pod, c = pod_of(render(SETS["secured"]))
    paths = [m["mountPath"] for m in c["volumeMounts"]]
    # Never nested inside the ConfigMap's /etc/tiercache (a read-only volume).
    assert all(p == "/etc/tiercache" or not p.startswith("/etc/tiercache/") for p in paths), paths
    for v in pod["volumes"]:
        if "secret" in v:
            assert v["secret"]["defaultMode"] == 0o440, v


def test_tls_files_and_exec_probes():
    docs = render(SETS["secured"])
    config = tomllib.loads(find(docs, "ConfigMap", "rel-tiercache")["data"]["tiercache.toml"])
    pod, c = pod_of(docs)
    files = mounted_files(pod, c)
    tls = config["tls"]
    assert files[tls["cert_file"]] == ("tiercache-tls", "tls.crt")
    assert files[tls["key_file"]] == ("tiercache-tls", "tls.key")
    assert files[tls["client_ca_file"]] == ("tiercache-tls", "ca.crt")
    assert tls["reload_interval"] == "10s"
    # The kubelet's gRPC probe cannot speak TLS: every probe is `tiercache health` over TLS to
    # the pod's own port, checking the certificate and (mTLS) presenting the pod's own.
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = c[name]
        assert "grpc" not in probe, name
        cmd = probe["exec"]["command"]
        assert cmd[:4] == ["tiercache", "health", "--addr", "https://127.0.0.1:50051"], cmd
        flags = dict(zip(cmd[4::2], cmd[5::2]))
        assert flags["--tls-ca"] == tls["client_ca_file"] and flags["--tls-server-name"] == "tiercache.cache.svc"
        assert (flags["--tls-cert"], flags["--tls-key"]) == (tls["cert_file"], tls["key_file"])
    # helm test, through the Service, over TLS too.
    test_pod = find(docs, "Pod")
    args = test_pod["spec"]["containers"][0]["args"]
    assert args[2] == "https://rel-tiercache:50051" and "--tls-ca" in args
    assert test_pod["spec"]["volumes"][0]["secret"]["secretName"] == "tiercache-tls"
    # Without mTLS the server asks for no client certificate and the probes present none.
    ha = render(SETS["ha"])
    _, c = pod_of(ha)
    assert "client_ca_file" not in tomllib.loads(find(ha, "ConfigMap", "rel-tiercache")["data"]["tiercache.toml"])["tls"]
    assert "--tls-cert" not in c["readinessProbe"]["exec"]["command"]
    # The server name defaults to the Service's DNS name.
    assert "rel-tiercache.cache.svc" in c["readinessProbe"]["exec"]["command"]


def test_plaintext_keeps_the_native_grpc_probes():
    _, c = pod_of(render())
    assert c["readinessProbe"]["grpc"]["service"] == "tiercache.v1.CacheService"
    assert "tls" not in rendered_toml()[1]


def test_redis_tls_and_password_secret():
    docs = render(SETS["ha"])
    config = tomllib.loads(find(docs, "ConfigMap", "rel-tiercache")["data"]["tiercache.toml"])
    redis = config["redis"]
    assert redis["url"].startswith("rediss://") and redis["username"] == "tiercache"
    pod, c = pod_of(docs)
    files = mounted_files(pod, c)
    assert files[redis["tls_ca_file"]] == ("redis-ca", "ca.crt")
    assert "tls_cert_file" not in redis
    assert {"name": "TIERCACHE_REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "tiercache-redis", "key": "redis-password"}}} in c["env"]
    assert not [d for d in docs if d["kind"] == "Secret"]
    # A client certificate for a Redis with tls-auth-clients.
    values = copy.deepcopy(SETS["ha"])
    values["redis"]["tls"].update(certKey="client.crt", keyKey="client.key")
    docs = render(values)
    redis = tomllib.loads(find(docs, "ConfigMap", "rel-tiercache")["data"]["tiercache.toml"])["redis"]
    files = mounted_files(*pod_of(docs))
    assert files[redis["tls_cert_file"]] == ("redis-ca", "client.crt")
    assert files[redis["tls_key_file"]] == ("redis-ca", "client.key")


def test_metrics_bearer_token():
    docs = render(SETS["secured"] | {"serviceMonitor": {**SETS["secured"]["serviceMonitor"], "enabled": True}})
    config = tomllib.loads(find(docs, "ConfigMap", "rel-tiercache")["data"]["tiercache.toml"])
    assert re.fullmatch(r"[0-9a-f]{64}", config["telemetry"]["admin_token_sha256"])
    (endpoint,) = find(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["bearerTokenSecret"] == {"name": "tiercache-metrics", "key": "token"}


def test_namespace_rate_limits_render_as_tables():
    _, config = rendered_toml({"config": {"defaults": {"rate_limit": {"per_second": 5000, "burst": 10000}},
                                          "namespaces": {"checkout": {"rate_limit": {"per_second": 100, "burst": 200}}}}})
    assert config["defaults"]["rate_limit"] == {"per_second": 5000, "burst": 10000}
    assert config["namespaces"]["checkout"]["rate_limit"] == {"per_second": 100, "burst": 200}
    # burst is optional (the server then uses per_second).
    _, config = rendered_toml({"config": {"defaults": {"rate_limit": {"per_second": 50}}}})
    assert config["defaults"]["rate_limit"] == {"per_second": 50}


# --- values.schema.json ----------------------------------------------------------------------------


def test_schema_is_valid_draft7():
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    r = subprocess.run([BIN / "check-jsonschema", "--check-metaschema", SCHEMA], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def merged(override: dict) -> dict:
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(base, over):
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                merge(base[k], v)
            else:
                base[k] = v

    merge(values, copy.deepcopy(override))
    return values


# (name, values override, whether values.schema.json itself rejects it; the rest fail in the
# templates, where Helm checks what a JSON schema cannot: arithmetic across keys).
BAD_VALUES = [
    ("negative replicas", {"replicaCount": -1}, True),
    ("unknown top-level key", {"replicas": 3}, True),
    ("unknown nested key", {"server": {"grpcPrt": 1}}, True),
    ("unknown policy field", {"config": {"defaults": {"default_tll": "1s"}}}, True),
    ("malformed duration", {"config": {"defaults": {"default_ttl": "5 minutes"}}}, True),
    ("malformed redis timeout", {"redis": {"responseTimeout": "1"}}, True),
    ("jitter above 1", {"config": {"namespaces": {"users": {"jitter": 2}}}}, True),
    ("bad namespace name", {"config": {"namespaces": {"Users": {}}}}, True),
    ("credentials in a tls url", {"redis": {"url": "rediss://u:p@redis:6380"}}, True),
    ("unknown right", {"auth": {"principals": {"a": {"rights": {"a*": ["delete"]}}}}}, True),
    ("namespace pattern with a star inside", {"auth": {"principals": {"a": {"rights": {"a*b": ["read"]}}}}}, True),
    ("token hash not sha256 hex", {"auth": {"principals": {"a": {"rights": {"a": ["read"]},
                                                                  "token_sha256": ["secret-token"]}}}}, True),
    ("principal without rights", {"auth": {"principals": {"a": {"token_sha256": ["0" * 64]}}}}, True),
    ("rate limit without per_second", {"auth": {"principals": {"a": {"rights": {"a": ["read"]},
                                                                       "rate_limit": {"burst": 5}}}}}, True),
    ("unknown tls key", {"tls": {"enable": True}}, True),
    ("metrics token not a hash", {"config": {"telemetry": {"adminTokenSha256": "hunter2"}}}, True),
    ("credentials in the url", {"redis": {"url": "redis://u:p@redis:6379"}}, True),
    ("memory limit without unit", {"resources": {"limits": {"memory": "512"}}}, True),
    ("port out of range", {"server": {"grpcPort": 70000}}, True),
    ("bad sampler", {"config": {"telemetry": {"tracesSampler": "sometimes"}}}, True),
    ("L1 budget below the server's minimum", {"config": {"l1": {"maxBytes": 65535}}}, True),
    ("negative namespace cap", {"config": {"limits": {"maxNamespaces": -1}}}, True),
    ("namespace cap above the server's maximum", {"config": {"limits": {"maxNamespaces": 100001}}}, True),
    # Gone: the L1 budget no longer grows with namespaces, so an old values file saying it
    # fails loudly instead of being ignored.
    ("removed sizing.dynamicNamespaces", {"sizing": {"dynamicNamespaces": 4}}, True),
    ("additional rule without expr", {"prometheusRule": {"additionalRules": [{"alert": "X"}]}}, True),
    ("additional rule neither alert nor record", {"prometheusRule": {"additionalRules": [{"expr": "up"}]}}, True),
    ("key prefix with a brace", {"redis": {"keyPrefix": "team{a}"}}, True),
    ("empty key prefix", {"redis": {"keyPrefix": ""}}, True),
    ("L1 budget above the memory limit", {"config": {"l1": {"maxBytes": 1073741824}}}, False),
    ("L1 budget without headroom",
     {"resources": {"limits": {"memory": "128Mi"}}, "config": {"l1": {"maxBytes": 104857600}}}, False),
    ("grace below the drain", {"server": {"terminationGracePeriodSeconds": 12}}, False),
    ("memory-only with replicas", {"redis": {"dev": {"enabled": False}}, "replicaCount": 3}, False),
    ("hpa without a metric", {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}, False),
    ("no auth and not allowInsecure", {"auth": {"allowInsecure": False}}, False),
    ("tokens secret without principals", {"auth": {"allowInsecure": True, "tokensSecret": "t"}}, False),
    ("tls without a secret", {"tls": {"enabled": True}}, False),
    ("mtls without tls", {"tls": {"clientAuth": True}}, False),
    ("redis tls with a plain url", {"redis": {"url": "redis://r:6379", "tls": {"secretName": "ca"}}}, False),
    ("redis client cert without key", {"redis": {"url": "rediss://r:6380",
                                                  "tls": {"secretName": "ca", "certKey": "tls.crt"}}}, False),
]


@pytest.fixture(scope="module")
def schema_verdicts(tmp_path_factory):
    """check-jsonschema over every bad and good value file in one run (it takes seconds to
    start): file stem -> the errors it reported (empty when the file passed)."""
    folder = tmp_path_factory.mktemp("values")
    files = []
    for i, (_, override, _) in enumerate(BAD_VALUES):
        files.append(folder / f"bad{i}.json")
        files[-1].write_text(json.dumps(merged(override)))
    for name, override in SETS.items():
        files.append(folder / f"good-{name}.json")
        files[-1].write_text(json.dumps(merged(override)))
    r = subprocess.run([BIN / "check-jsonschema", "--schemafile", SCHEMA, "-o", "json", *files],
                       capture_output=True, text=True)
    report = json.loads(r.stdout)
    assert not report["parse_errors"], report
    verdicts = {f.stem: [] for f in files}
    for e in report["errors"]:
        verdicts[Path(e["filename"]).stem].append(f"{e['path']}: {e['message']}")
    return verdicts


@pytest.mark.parametrize("index", range(len(BAD_VALUES)), ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_rejected(index, schema_verdicts):
    name, override, by_schema = BAD_VALUES[index]
    errors = schema_verdicts[f"bad{index}"]
    assert bool(errors) == by_schema, errors
    # Helm refuses them all at install, by the schema or by a template check.
    with pytest.raises(Exception) as e:
        render(override)
    message = str(e.value)
    if by_schema:
        assert "schema" in message.lower(), message
    else:
        assert TEMPLATE_CHECKS[name] in message, message


# What the template check says for the cases the schema cannot catch.
TEMPLATE_CHECKS = {
    "L1 budget above the memory limit": "the L1 budget (config.l1.maxBytes, 1024 MiB",
    "L1 budget without headroom": "the L1 budget (config.l1.maxBytes, 100 MiB",
    "grace below the drain": "server.terminationGracePeriodSeconds (12) must be above",
    "memory-only with replicas": "memory-only",
    "hpa without a metric": "autoscaling needs",
    "no auth and not allowInsecure": "set auth.principals",
    "tokens secret without principals": "auth.tokensSecret maps tokens to principals",
    "tls without a secret": "tls.enabled needs tls.secretName",
    "mtls without tls": "tls.clientAuth (mTLS) needs tls.enabled",
    "redis tls with a plain url": "redis.tls.secretName needs a rediss:// redis.url",
    "redis client cert without key": "redis.tls.certKey needs redis.tls.keyKey",
}


@pytest.mark.parametrize("name", sorted(SETS))
def test_good_values_pass_the_schema(name, schema_verdicts):
    assert schema_verdicts[f"good-{name}"] == []


# --- the rendered TOML against the server's config (crates/tiercache-server/src/config.rs) ----------

CONFIG_RS = ROOT / "crates" / "tiercache-server" / "src" / "config.rs"


def server_structs() -> dict[str, dict[str, str]]:
    """Every struct of config.rs: name -> {field: Rust type}. They all deny unknown fields."""
    text = CONFIG_RS.read_text()
    structs = {}
    for m in re.finditer(r"^pub struct (\w+) \{\n(.*?)^\}", text, re.S | re.M):
        structs[m.group(1)] = dict(re.findall(r"^    pub (\w+): (.+),$", m.group(2), re.M))
    return structs


# Rust types the server reads from a TOML string (TokenHash: a serde-transparent String).
STRING_TYPES = ("String", "Duration", "SocketAddr", "PathBuf", "TokenHash")


def server_rejects(table: dict, struct: str, structs: dict, where: str = "") -> list[str]:
    """What serde would refuse in `table` read as `struct`: unknown fields (deny_unknown_fields)
    and values of the wrong TOML type."""
    problems = []
    fields = structs[struct]
    for key, value in table.items():
        path = f"{where}{key}"
        if key not in fields:
            problems.append(f"{path}: no such field in {struct}")
            continue
        ty = re.sub(r"^Option<(.+)>$", r"\1", fields[key])
        if ty == "BTreeMap<String, Vec<String>>":
            if not isinstance(value, dict) or not all(
                    isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values()):
                problems.append(f"{path}: a table of string lists expected")
        elif m := re.fullmatch(r"Vec<(\w+)>", ty):
            if not isinstance(value, list):
                problems.append(f"{path}: a list expected")
            elif m.group(1) in structs:
                for i, sub in enumerate(value):
                    problems += server_rejects(sub, m.group(1), structs, f"{path}[{i}].")
            elif m.group(1) in STRING_TYPES:
                problems += [f"{path}[{i}]: a string expected" for i, v in enumerate(value) if not isinstance(v, str)]
            else:
                problems.append(f"{path}: the test does not know the Rust type {ty}")
        elif m := re.fullmatch(r"BTreeMap<String, (\w+)>", ty):
            if not isinstance(value, dict):
                problems.append(f"{path}: a table expected")
            elif m.group(1) in structs:
                for name, sub in value.items():
                    problems += server_rejects(sub, m.group(1), structs, f"{path}.{name}.")
            else:
                problems += [f"{path}.{k}: a string expected" for k, v in value.items() if not isinstance(v, str)]
        elif ty in structs:
            problems += server_rejects(value, ty, structs, f"{path}.") if isinstance(value, dict) \
                else [f"{path}: a table expected"]
        elif ty in ("u64", "usize", "u32"):
            if type(value) is not int or value < 0 or (ty == "u32" and value >= 2**32):
                problems.append(f"{path}: an unsigned integer ({ty}) expected, got {value!r}")
        elif ty == "bool":
            if type(value) is not bool:
                problems.append(f"{path}: a boolean expected, got {value!r}")
        elif ty == "f64":
            if type(value) not in (int, float):
                problems.append(f"{path}: a number expected, got {value!r}")
        elif ty in STRING_TYPES:
            if not isinstance(value, str):
                problems.append(f"{path}: a string expected, got {value!r}")
        else:
            problems.append(f"{path}: the test does not know the Rust type {ty}")
    return problems


def rendered_toml(values: dict | None = None) -> tuple[str, dict]:
    text = find(render(values), "ConfigMap", "rel-tiercache")["data"]["tiercache.toml"]
    return text, tomllib.loads(text)


def validate_bound(expr: str) -> int:
    """The bound of one Config::validate comparison, like `self.l1.max_bytes < 64 * 1024`."""
    m = re.search(re.escape(expr) + r" ([0-9_* ]+)\{", CONFIG_RS.read_text())
    assert m, f"config.rs no longer checks `{expr}`: update the chart's schema and this test"
    return eval(m.group(1).replace("_", ""))  # digits, underscores and * only


def test_default_toml_carries_the_l1_budget_and_the_namespace_cap():
    text, config = rendered_toml()
    assert config["l1"] == {"max_bytes": 268435456}, text
    assert config["limits"]["max_namespaces"] == 64, text
    # Written as TOML integers, never floats or exponents (a float would not deserialize as u64).
    assert re.search(r"^max_bytes = 268435456$", text, re.M), text
    assert re.search(r"^max_namespaces = 64$", text, re.M), text


def test_redis_key_prefix_reaches_the_server_config():
    _, config = rendered_toml()
    assert config["redis"]["key_prefix"] == "tc"
    _, config = rendered_toml({"redis": {"keyPrefix": "team-a"}})
    assert config["redis"]["key_prefix"] == "team-a"


@pytest.mark.parametrize("name", sorted(SETS))
def test_rendered_toml_is_what_the_server_parses(name):
    _, config = rendered_toml(SETS[name])
    structs = server_structs()
    assert {"Config", "L1Config", "LimitsConfig"} <= set(structs)
    assert server_rejects(config, "Config", structs) == []
    # Config::validate's rules for the new settings hold.
    assert config["l1"]["max_bytes"] >= validate_bound("self.l1.max_bytes <")
    assert config["limits"]["max_namespaces"] <= validate_bound("self.limits.max_namespaces >")


def test_the_checker_catches_what_the_server_rejects():
    structs = server_structs()
    assert server_rejects({"l1": {"max_byte": 1}}, "Config", structs) == ["l1.max_byte: no such field in L1Config"]
    assert server_rejects({"l1": {"max_bytes": 2.5e8}}, "Config", structs)
    assert server_rejects({"limits": {"max_namespaces": -1}}, "Config", structs)
    assert server_rejects({"namespaces": {"a": {"l1_max_byte": 1}}}, "Config", structs)


def test_schema_bounds_match_the_server():
    props = json.loads(SCHEMA.read_text())["properties"]["config"]["properties"]
    assert props["l1"]["properties"]["maxBytes"]["minimum"] == validate_bound("self.l1.max_bytes <")
    namespaces = props["limits"]["properties"]["maxNamespaces"]
    assert namespaces["minimum"] == 0
    assert namespaces["maximum"] == validate_bound("self.limits.max_namespaces >")


def test_values_override_the_l1_budget_and_the_namespace_cap():
    _, config = rendered_toml({"config": {"l1": {"maxBytes": 134217728}, "limits": {"maxNamespaces": 0}}})
    assert config["l1"]["max_bytes"] == 134217728
    assert config["limits"]["max_namespaces"] == 0


def test_l1_budget_may_take_exactly_the_allowed_share():
    # 75 % of 512Mi is 384 MiB: that renders, one byte more does not.
    allowed = 512 * 1024 * 1024 * 75 // 100
    render({"config": {"l1": {"maxBytes": allowed}}})
    with pytest.raises(Exception) as e:
        render({"config": {"l1": {"maxBytes": allowed + 1}}})
    assert "config.l1.maxBytes" in str(e.value) and "resources.limits.memory (512Mi)" in str(e.value)


def test_namespace_caps_do_not_add_to_the_budget():
    # Every namespace shares the one L1: per-namespace l1_max_bytes caps, however many and however
    # large, and the number of dynamic namespaces do not change what L1 may take.
    many = {f"ns{i}": {"l1_max_bytes": 268435456} for i in range(8)}
    _, config = rendered_toml({"config": {"namespaces": many, "defaults": {"l1_max_bytes": 268435456},
                                          "limits": {"maxNamespaces": 100000}}})
    assert config["l1"]["max_bytes"] == 268435456
    assert config["namespaces"]["ns7"]["l1_max_bytes"] == 268435456
