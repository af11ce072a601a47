#!/usr/bin/env python3
"""Checks the deployment artefacts under deploy/ for consistency.

- every *.yml / *.yaml file parses (all documents);
- Kubernetes: every object has apiVersion/kind/metadata.name; the StatefulSet's governing Service
  is headless; Service, PodDisruptionBudget and StatefulSet selectors match the pod labels;
  Service target ports and probe ports name container ports; the readiness probe uses /readyz,
  the startup and liveness probes /healthz; volumes and
  claim templates exist for every mount; the data mount is the configured data_dir; the pod runs
  as non-root with a read-only root file system; terminationGracePeriodSeconds exceeds the
  preStop pause plus [shutdown] grace_period; the ServiceMonitor selects exactly one Service
  (headless, publishing not-ready pods), one of its ports, and yields job="postrider";
  kustomization resources exist and list every manifest; the Valkey of cluster mode is one
  StatefulSet with a volume behind a Service that the ConfigMap's [cluster] url names;
- kubernetes/prometheusrule.yaml holds exactly the groups of prometheus/alerts.yml and
  prometheus/recording.yml (`--write-prometheusrule` regenerates it);
- systemd: TimeoutStopSec exceeds the example config's grace period, the unit runs the binary
  with that config, data_dir is the StateDirectory; `systemd-analyze verify` (when present)
  reports nothing on the unit;
- Docker: EXPOSEd ports are the example config's listen ports, files COPYed from the context
  exist, STOPSIGNAL is SIGTERM; compose.yaml's nodes each have their own host name (node id) and
  queue volume, mount cluster.toml and wait for the Valkey that cluster.toml names;
- HAProxy: no PROXY protocol (send-proxy), leastconn balancing, and health checks on /readyz for
  both backends (the SMTP one also expects the SMTP greeting);
- every example configuration is valid TOML and, when a built `postrider` binary is found
  ($POSTRIDER_BIN, or target*/debug|release/postrider), passes `postrider check-config`.

Exit status 1 with one line per problem. Needs PyYAML; Python 3.11+ (tomllib).
usage: deploy/check-manifests.py [--write-prometheusrule]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Kubernetes probes: start-up and liveness while the process serves, readiness while the queue
# takes writes (a node with a full disk leaves the Service but is not restarted).
PROBE_PATHS = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
RULES = [DEPLOY / "prometheus/alerts.yml", DEPLOY / "prometheus/recording.yml"]
PROMETHEUSRULE = K8S / "prometheusrule.yaml"

problems = []


def problem(msg):
    problems.append(msg)


def duration_seconds(text):
    """Parses Postrider / systemd durations like "30s", "1m30s", "45s", "45"."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    total = 0
    units = {"d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1}
    matched = re.findall(r"(\d+)\s*(d|h|min|m|s)", text)
    if not matched or "".join(n + u for n, u in matched) != text.replace(" ", ""):
        raise ValueError(f"cannot parse duration {text!r}")
    for n, u in matched:
        total += int(n) * units[u]
    return total


def load_yaml_files():
    docs = {}
    for path in sorted(list(DEPLOY.rglob("*.yml")) + list(DEPLOY.rglob("*.yaml"))):
        try:
            docs[path] = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        except yaml.YAMLError as e:
            problem(f"{path.relative_to(ROOT)}: YAML error: {e}")
    return docs


def prometheusrule_object():
    groups = []
    for path in RULES:
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "postrider", "labels": {"app.kubernetes.io/name": "postrider"}},
        "spec": {"groups": groups},
    }


def write_prometheusrule():
    header = (
        "# Prometheus Operator: the alert and recording rules of deploy/prometheus/alerts.yml and\n"
        "# recording.yml. Generated: edit those files, then run\n"
        "#   deploy/check-manifests.py --write-prometheusrule\n"
        "# (tests/check-promtool.sh fails when this file and the rule files disagree).\n"
        "# Your Prometheus resource's ruleSelector must match these labels.\n"
    )
    class Dumper(yaml.SafeDumper):
        """Writes multi-line strings (PromQL) as literal blocks, as in the rule files."""

    def text(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump(prometheusrule_object(), Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
    PROMETHEUSRULE.write_text(header + body, encoding="utf-8")
    print(f"wrote {PROMETHEUSRULE.relative_to(ROOT)}")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def app_name(d):
    return d.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/name")


def check_valkey(valkey, objects):
    """The Valkey of cluster mode: one StatefulSet with a volume, a Service selecting its pods
    on the container port, and the relay's [cluster] url pointing at that Service."""
    sts = [d for d in valkey if d.get("kind") == "StatefulSet"]
    svcs = [d for d in valkey if d.get("kind") == "Service"]
    if not sts and not svcs:
        return
    if len(sts) != 1 or len(svcs) != 1:
        problem(f"valkey: expected one StatefulSet and one Service, found {len(sts)} and {len(svcs)}")
        return
    pod = sts[0]["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    if not matches(svcs[0]["spec"].get("selector"), labels) or not matches(sts[0]["spec"]["selector"].get("matchLabels"), labels):
        problem("valkey: Service or StatefulSet selector does not match the pod labels")
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for p in svcs[0]["spec"].get("ports", []):
        if p.get("targetPort") not in port_names:
            problem(f"valkey: Service targetPort {p.get('targetPort')!r} is not a container port name")
    if not sts[0]["spec"].get("volumeClaimTemplates"):
        problem("valkey: no volumeClaimTemplates (its append-only file needs a volume)")
    for c in pod["spec"]["containers"]:
        if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            problem(f"valkey container {c['name']}: readOnlyRootFilesystem must be true")
    service = svcs[0]["metadata"]["name"]
    port = svcs[0]["spec"]["ports"][0]["port"]
    for _, d in objects:
        if d.get("kind") == "ConfigMap" and "postrider.toml" in d.get("data", {}):
            try:
                url = tomllib.loads(d["data"]["postrider.toml"]).get("cluster", {}).get("url", "")
            except tomllib.TOMLDecodeError:
                continue  # reported by the relay's own checks
            if not re.match(rf"^rediss?://{re.escape(service)}:{port}(/|$)", url):
                problem(f"configmap: [cluster] url {url!r} does not point at the valkey Service ({service}:{port})")


def check_kubernetes(docs):
    objects = []
    for path, ds in docs.items():
        if K8S in path.parents:
            for d in ds:
                if path.name == "kustomization.yaml":
                    continue
                for key in ("apiVersion", "kind"):
                    if key not in d:
                        problem(f"{path.name}: object without {key}")
                if not d.get("metadata", {}).get("name"):
                    problem(f"{path.name}: {d.get('kind')} without metadata.name")
                objects.append((path, d))
    # Valkey (cluster mode) is checked on its own; everything else belongs to the relay.
    valkey = [d for _, d in objects if app_name(d) == "valkey"]
    check_valkey(valkey, objects)
    by_kind = {}
    for path, d in objects:
        if app_name(d) != "valkey":
            by_kind.setdefault(d.get("kind"), []).append(d)

    configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    sts_list = by_kind.get("StatefulSet", [])
    if len(sts_list) != 1:
        problem(f"kubernetes: expected one StatefulSet, found {len(sts_list)}")
        return
    sts = sts_list[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    if not matches(spec["selector"].get("matchLabels"), pod_labels):
        problem("statefulset: selector does not match the pod template labels")

    governing = services.get(spec.get("serviceName"))
    if not governing or governing["spec"].get("clusterIP") != "None":
        problem(f"statefulset: serviceName {spec.get('serviceName')!r} is not a headless Service")

    containers = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}
    for name, svc in services.items():
        if not matches(svc["spec"].get("selector"), pod_labels):
            problem(f"service {name}: selector does not match the pod labels")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort", p.get("port"))
            if isinstance(tp, str) and tp not in port_names:
                problem(f"service {name}: targetPort {tp!r} is not a container port name")
            if isinstance(tp, int) and tp not in port_names.values():
                problem(f"service {name}: targetPort {tp} is not a container port")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not matches(pdb["spec"]["selector"].get("matchLabels"), pod_labels):
            problem("poddisruptionbudget: selector does not match the pod labels")
        if pdb["spec"].get("maxUnavailable") != 1:
            problem("poddisruptionbudget: maxUnavailable should be 1")

    # The configuration the pods read.
    config_volume = next((v for v in pod.get("volumes", []) if "configMap" in v), None)
    config = None
    if not config_volume or config_volume["configMap"]["name"] not in configmaps:
        problem("statefulset: no volume from the postrider ConfigMap")
    else:
        cm = configmaps[config_volume["configMap"]["name"]]
        try:
            config = tomllib.loads(cm["data"]["postrider.toml"])
        except (KeyError, tomllib.TOMLDecodeError) as e:
            problem(f"configmap: postrider.toml missing or not TOML: {e}")

    volumes = {v["name"] for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    if not claims:
        problem("statefulset: no volumeClaimTemplates (each node needs its own queue volume)")
    for c in containers:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(f"container {c['name']}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(f"container {c['name']}: allowPrivilegeEscalation must be false")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for path, name in mounts.items():
            if name not in volumes and name not in claims:
                problem(f"container {c['name']}: mount {path} uses unknown volume {name!r}")
        if config is not None:
            data_dir = config.get("data_dir")
            if mounts.get(data_dir) not in claims:
                problem(f"container {c['name']}: data_dir {data_dir!r} is not on a volumeClaimTemplate")
            http_port = int(str(config.get("http", {}).get("listen", ":8025")).rsplit(":", 1)[1])
            smtp_ports = {int(a.rsplit(":", 1)[1]) for a in config.get("smtp", {}).get("listen", [])}
            if port_names.get("http") != http_port:
                problem(f"container port http ({port_names.get('http')}) != http.listen port {http_port}")
            if port_names.get("smtp") not in smtp_ports:
                problem(f"container port smtp ({port_names.get('smtp')}) is not an smtp.listen port {sorted(smtp_ports)}")
        for probe, path in PROBE_PATHS.items():
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or get.get("port") not in port_names:
                problem(f"container {c['name']}: {probe} must GET {path} on a named container port")
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pause = int(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else 0
        if config is not None:
            grace = duration_seconds(config.get("shutdown", {}).get("grace_period", "30s"))
            tgps = pod.get("terminationGracePeriodSeconds", 30)
            if tgps <= pause + grace:
                problem(f"terminationGracePeriodSeconds {tgps} must exceed preStop {pause}s + grace_period {grace}s")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        problem("statefulset: pod must run as a non-root user")

    for sm in by_kind.get("ServiceMonitor", []):
        selected = [s for s in services.values() if matches(sm["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels", {}))]
        if len(selected) != 1:
            problem(f"servicemonitor: selects {len(selected)} Services, expected exactly one (double scraping otherwise)")
        else:
            svc_ports = {p["name"] for p in selected[0]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in svc_ports or ep.get("path") != "/metrics":
                    problem(f"servicemonitor: endpoint {ep} is not /metrics on a port of {selected[0]['metadata']['name']}")
            job_label = sm["spec"].get("jobLabel")
            job = selected[0]["metadata"].get("labels", {}).get(job_label) if job_label else selected[0]["metadata"]["name"]
            if job != "postrider":
                problem(f"servicemonitor: scrapes with job={job!r}; the alert rules expect job=\"postrider\"")
            if selected[0]["spec"].get("clusterIP") != "None" or not selected[0]["spec"].get("publishNotReadyAddresses"):
                problem("servicemonitor: scrape the headless Service that publishes not-ready pods, so draining nodes stay visible")

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    for res in kustomization.get("resources", []):
        if not (K8S / res).exists():
            problem(f"kustomization: resource {res} does not exist")
    listed = set(kustomization.get("resources", []))
    for path in K8S.glob("*.yaml"):
        if path.name != "kustomization.yaml" and path.name not in listed:
            problem(f"kustomization: {path.name} is not listed in resources")

    # The PrometheusRule mirrors the rule files.
    prs = by_kind.get("PrometheusRule", [])
    if len(prs) != 1:
        problem("kubernetes: expected one PrometheusRule")
    elif prs[0]["spec"] != prometheusrule_object()["spec"]:
        problem("prometheusrule.yaml differs from prometheus/alerts.yml + recording.yml: run deploy/check-manifests.py --write-prometheusrule")


def unit_settings(path):
    settings = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            settings.setdefault(m.group(1), []).append(m.group(2))
    return settings


def check_systemd():
    unit = DEPLOY / "systemd/postrider.service"
    cfg_path = DEPLOY / "systemd/postrider.toml"
    s = unit_settings(unit)
    config = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    grace = duration_seconds(config.get("shutdown", {}).get("grace_period", "30s"))
    stop = duration_seconds(s.get("TimeoutStopSec", ["90s"])[-1])
    if stop <= grace:
        problem(f"systemd: TimeoutStopSec {stop}s must exceed grace_period {grace}s")
    exec_start = s.get("ExecStart", [""])[-1]
    if not re.search(r"postrider serve --config /etc/postrider/postrider\.toml$", exec_start):
        problem(f"systemd: unexpected ExecStart {exec_start!r}")
    state = s.get("StateDirectory", [""])[-1]
    if config.get("data_dir") != f"/var/lib/{state}":
        problem(f"systemd: data_dir {config.get('data_dir')!r} is not /var/lib/<StateDirectory={state}>")
    for key, want in (("KillSignal", "SIGTERM"), ("Type", "simple"), ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes")):
        if s.get(key, [None])[-1] != want:
            problem(f"systemd: {key} should be {want}")
    analyze = shutil.which("systemd-analyze")
    if analyze:
        # verify wants the executables to exist: check a copy that runs /bin/true instead.
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "postrider.service"
            copy.write_text(unit.read_text(encoding="utf-8").replace("/usr/local/bin/postrider", "/bin/true"), encoding="utf-8")
            out = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, check=False)
            noise = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
            if out.returncode != 0 or noise:
                problem("systemd-analyze verify: " + " | ".join(noise or [f"exit {out.returncode}"]))
            else:
                print("systemd-analyze verify: postrider.service ok")


def check_docker():
    dockerfile = (DEPLOY / "docker/Dockerfile").read_text(encoding="utf-8")
    config = tomllib.loads((DEPLOY / "docker/postrider.toml").read_text(encoding="utf-8"))
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for p in line.split()}
    wanted = {int(a.rsplit(":", 1)[1]) for a in config["smtp"]["listen"]} | {int(config["http"]["listen"].rsplit(":", 1)[1])}
    if exposed != wanted:
        problem(f"docker: EXPOSE {sorted(exposed)} differs from the config's listen ports {sorted(wanted)}")
    for src in re.findall(r"^COPY (?!--from)(\S+) \S+$", dockerfile, re.M):
        if src != "." and not (ROOT / src).exists():
            problem(f"docker: COPY source {src} does not exist")
    if not re.search(r"^STOPSIGNAL SIGTERM$", dockerfile, re.M):
        problem("docker: STOPSIGNAL SIGTERM missing")
    if "VOLUME /var/lib/postrider" not in dockerfile or config.get("data_dir") != "/var/lib/postrider":
        problem("docker: data_dir must be the VOLUME /var/lib/postrider")


def check_compose(docs):
    """compose.yaml: every Postrider node mounts cluster.toml, has its own stable host name (its
    node id) and queue volume, waits for Valkey, and cluster.toml names the Valkey service."""
    compose = (docs.get(DEPLOY / "docker/compose.yaml") or [None])[0]
    if not compose:
        return
    services = compose.get("services", {})
    valkey = [name for name, s in services.items() if "valkey" in str(s.get("image", ""))]
    if len(valkey) != 1:
        problem(f"compose: expected one Valkey service, found {valkey}")
        return
    nodes = {name: s for name, s in services.items() if name not in valkey}
    hostnames, queues = [], []
    for name, s in nodes.items():
        mounts = s.get("volumes", [])
        if "./cluster.toml:/etc/postrider/postrider.toml:ro" not in mounts:
            problem(f"compose: {name} does not mount cluster.toml read-only as its configuration")
        queue = [m.split(":", 1)[0] for m in mounts if m.split(":")[1:2] == ["/var/lib/postrider"]]
        if len(queue) != 1:
            problem(f"compose: {name} needs one volume at /var/lib/postrider for its queue")
        queues += queue
        hostnames.append(s.get("hostname"))
        if valkey[0] not in s.get("depends_on", {}):
            problem(f"compose: {name} does not depend on {valkey[0]}")
    if None in hostnames or len(set(hostnames)) != len(hostnames):
        problem(f"compose: every node needs its own hostname (its node id), got {hostnames}")
    if len(set(queues)) != len(queues):
        problem(f"compose: nodes share a queue volume: {queues}")
    url = tomllib.loads((DEPLOY / "docker/cluster.toml").read_text(encoding="utf-8")).get("cluster", {}).get("url", "")
    if not re.match(rf"^rediss?://{re.escape(valkey[0])}:6379(/|$)", url):
        problem(f"docker/cluster.toml: [cluster] url {url!r} does not name the {valkey[0]} service")


def check_haproxy():
    lines = [ln.split("#", 1)[0].strip() for ln in (DEPLOY / "haproxy/haproxy.cfg").read_text(encoding="utf-8").splitlines()]
    directives = [ln for ln in lines if ln]
    # Nodes see the real clients through the PROXY protocol, and their checks must send it too
    # (a node refuses a connection from a trusted proxy that lacks the header).
    for server in (d for d in directives if d.startswith("server ")):
        if "send-proxy-v2" not in server.split() or "check-send-proxy" not in server.split():
            problem(f"haproxy: `{server}` needs send-proxy-v2 and check-send-proxy")
    if any(d.startswith("tcp-check connect") and "send-proxy" not in d.split() for d in directives):
        problem("haproxy: every `tcp-check connect` needs send-proxy (the node expects the header)")
    for want in (
        "balance leastconn",
        "mode tcp",
        # SMTP backend: the greeting, then readiness on the API port.
        "option tcp-check",
        "tcp-check expect rstring ^220",
        'tcp-check send "GET /readyz ',
        # API backend: readiness.
        "http-check send meth GET uri /readyz ",
        "http-check expect status 200",
    ):
        if not any(d.startswith(want) for d in directives):
            problem(f"haproxy: expected `{want}`")
    if any("/healthz" in d for d in directives if "check" in d):
        problem("haproxy: health checks must use /readyz (503 while the queue refuses writes), not /healthz")


def find_binary():
    candidates = [os.environ.get("POSTRIDER_BIN", "")]
    target = os.environ.get("CARGO_TARGET_DIR")
    dirs = [Path(target)] if target else []
    dirs += sorted(ROOT.glob("target*"))
    for d in dirs:
        candidates += [str(d / "debug/postrider"), str(d / "release/postrider")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def check_configs(docs):
    configs = {
        "systemd/postrider.toml": (DEPLOY / "systemd/postrider.toml").read_text(encoding="utf-8"),
        "docker/postrider.toml": (DEPLOY / "docker/postrider.toml").read_text(encoding="utf-8"),
        "docker/cluster.toml": (DEPLOY / "docker/cluster.toml").read_text(encoding="utf-8"),
    }
    for d in docs.get(K8S / "configmap.yaml", []):
        configs["kubernetes/configmap.yaml"] = d["data"]["postrider.toml"]
    for name, text in configs.items():
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            problem(f"{name}: not valid TOML: {e}")
    binary = find_binary()
    if not binary:
        print("note: no built postrider binary found; skipping `postrider check-config` of the example configs")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in configs.items():
            path = Path(tmp) / "postrider.toml"
            path.write_text(text, encoding="utf-8")
            out = subprocess.run([binary, "check-config", "--config", str(path)], capture_output=True, text=True, check=False, timeout=30)
            if out.returncode != 0:
                problem(f"{name}: postrider check-config failed: {(out.stderr or out.stdout).strip()}")
            else:
                print(f"postrider check-config: {name} ok")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-prometheusrule", action="store_true", help="regenerate kubernetes/prometheusrule.yaml")
    args = parser.parse_args()
    if args.write_prometheusrule:
        write_prometheusrule()
    docs = load_yaml_files()
    if not problems:
        check_kubernetes(docs)
        check_compose(docs)
        check_systemd()
        check_docker()
        check_haproxy()
        check_configs(docs)
    if problems:
        for p in problems:
            print(f"check-manifests: {p}", file=sys.stderr)
        return 1
    print(f"check-manifests: {len(docs)} YAML files parse; Kubernetes, systemd, Docker and HAProxy artefacts agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
