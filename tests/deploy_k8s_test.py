#!/usr/bin/env python3
"""The Kubernetes manifests (deploy/k8s) render and hold what docs/DEPLOY.md
promises: every workload has startup, readiness and liveness probes on its gRPC
port, resource requests and a memory limit, a non-root read-only security
context, a grace period that covers its preStop sleep and --drain-grace-s, a
PodDisruptionBudget, a Service whose ports are its containers' named ports, and
a NetworkPolicy; every flag in its arguments is one its binary takes; the image
(deploy/docker) installs every program the workloads run, as the user they run
as, with the model where the cpu overlay looks; every autoscaler targets a
workload and the ServiceMonitor every metrics port; and the generated files
(gen_experts.py, gen_monitoring.py) are what their scripts make.

  deploy_k8s_test.py BUILD_DIR

Rendering needs kubectl with kustomize 5 (kubectl 1.27 or later); without it
the test says so and is skipped (exit 77).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "deploy", "k8s")
BINARIES = {
    "/opt/moemesh/bin/moemesh-gateway": "services/gateway/moemesh-gateway",
    "/opt/moemesh/bin/moemesh-router": "services/router/moemesh-router",
    "/opt/moemesh/bin/moemesh-expert": "services/expert/moemesh-expert",
    "/opt/moemesh/bin/moemesh-kvcache": "services/kvcache/moemesh-kvcache",
}
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def kustomize_version():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True).stdout
    m = re.search(r"Kustomize Version: v(\d+)", out)
    return int(m.group(1)) if m else None


def flags_of(binary, cache={}):
    """The flag names (with dashes) that `binary --helpfull` lists."""
    if binary not in cache:
        out = subprocess.run([binary, "--helpfull"], capture_output=True, text=True)
        cache[binary] = {f.replace("_", "-") for f in re.findall(r"^\s+--([a-z0-9_]+) ", out.stdout + out.stderr, re.M)}
    return cache[binary]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_overlay(name, objects, build_dir):
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    check(len(workloads) >= 4, f"{name}: {len(workloads)} workloads")
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    services = [o for o in objects if o["kind"] == "Service"]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for w in workloads:
        where = f"{name}: {w['kind']} {w['metadata']['name']}"
        pod = w["spec"]["template"]
        labels = pod["metadata"]["labels"]
        spec = pod["spec"]
        check(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
        check(spec.get("automountServiceAccountToken") is False, f"{where}: service account token mounted")
        check(any(matches(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs), f"{where}: no PDB")
        check(any(matches(p["spec"]["podSelector"]["matchLabels"], labels) and p["spec"].get("ingress")
                  for p in policies), f"{where}: no NetworkPolicy lets anything in")
        for c in spec["containers"]:
            cw = f"{where} container {c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            secrets = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe, {})
                if "exec" in p:  # TLS: `moemesh client health` against this pod's gRPC port
                    check_health_probe(f"{cw}: {probe}", p["exec"]["command"], ports.get("grpc"), mounts, secrets,
                                       build_dir)
                else:
                    check(p.get("grpc", {}).get("port") == ports.get("grpc"), f"{cw}: {probe} on grpc")
            res = c.get("resources", {})
            check("cpu" in res.get("requests", {}) and "memory" in res.get("requests", {}), f"{cw}: requests")
            check("memory" in res.get("limits", {}), f"{cw}: memory limit")
            sc = c.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem")
            check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities")
            args = c.get("args", [])
            grace = next((int(a.split("=")[1]) for a in args if a.startswith("--drain-grace-s=")), 5)
            sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            check(spec.get("terminationGracePeriodSeconds", 30) >= sleep + grace + 1,
                  f"{cw}: terminationGracePeriodSeconds below preStop {sleep} s + drain {grace} s")
            port_args = {a.split("=")[0]: a.split("=")[1] for a in args if "=" in a}
            for flag in ("--tls-cert", "--tls-key", "--tls-ca"):
                if flag in port_args:
                    check(in_secret(port_args[flag], mounts, secrets), f"{cw}: {flag} is not in a mounted Secret")
            if "--tls-cert" in port_args:
                insecure = [a for a in args if a.startswith("--insecure")]
                check(not insecure or insecure[-1] == "--insecure=false", f"{cw}: --insecure left on under TLS")
            for flag, port in (("--port", "grpc"), ("--data-port", "data"), ("--metrics-port", "metrics"),
                               ("--http-port", "http")):
                if flag in port_args:
                    check(str(ports.get(port)) == port_args[flag], f"{cw}: {flag} is not the {port} port")
            binary = BINARIES.get(c["command"][0])
            check(binary is not None, f"{cw}: unknown command {c['command']}")
            if binary:
                known = flags_of(os.path.join(build_dir, binary))
                for a in args:
                    flag = a[2:].split("=")[0]
                    check(flag in known, f"{cw}: {c['command'][0]} has no flag --{flag}")
        for s in services:
            if matches(s["spec"]["selector"], labels):
                for p in s["spec"]["ports"]:
                    check(any(p["targetPort"] == q["name"] for c in spec["containers"] for q in c.get("ports", [])),
                          f"{where}: Service {s['metadata']['name']} port {p['name']} targets no container port")
        check(any(matches(s["spec"]["selector"], labels) for s in services), f"{where}: no Service")
    names = {(w["kind"], w["metadata"]["name"]) for w in workloads}
    for h in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        ref = h["spec"]["scaleTargetRef"]
        check((ref["kind"], ref["name"]) in names, f"{name}: autoscaler {h['metadata']['name']} targets nothing")
    tls = any(a.startswith("--tls-cert=") for w in workloads for c in w["spec"]["template"]["spec"]["containers"]
              for a in c.get("args", []))
    for m in (o for o in objects if o["kind"] == "ServiceMonitor"):
        for e in m["spec"]["endpoints"]:
            check(not tls or (e.get("scheme") == "https" and "cert" in e.get("tlsConfig", {})),
                  f"{name}: the metrics ports speak TLS and ask for a certificate; ServiceMonitor endpoint "
                  f"{e.get('port')} scrapes without")
        for s in services:
            if any(p["name"] == "metrics" for p in s["spec"]["ports"]):
                sl = s["metadata"].get("labels", {})
                check(matches(m["spec"]["selector"]["matchLabels"], sl) and m["spec"]["jobLabel"] in sl,
                      f"{name}: ServiceMonitor misses Service {s['metadata']['name']}")


def in_secret(path, mounts, secrets):
    """Whether `path` is under a mount of one of the pod's Secret volumes."""
    return any(path.startswith(m.rstrip("/") + "/") and v in secrets for m, v in mounts.items())


def check_health_probe(where, command, grpc_port, mounts, secrets, build_dir):
    """An exec probe: the image's CLI asking this pod's gRPC port, its TLS
    files in a mounted Secret, every flag one `moemesh client health` has."""
    check(command[:3] == ["/opt/moemesh/bin/moemesh", "client", "health"], f"{where}: runs {command[:3]}")
    flags = dict(a[2:].split("=", 1) for a in command[3:] if a.startswith("--") and "=" in a)
    check(flags.get("target") == f"localhost:{grpc_port}", f"{where}: asks {flags.get('target')}")
    for f in ("tls-ca", "tls-cert", "tls-key"):
        check(f in flags and in_secret(flags[f], mounts, secrets), f"{where}: --{f} is not in a mounted Secret")
    cli = os.path.join(build_dir, "tools/moemesh/moemesh")
    known = set(re.findall(r"^\s+--([a-z0-9-]+)", subprocess.run([cli, "client", "health", "--help"],
                                                                  capture_output=True, text=True).stdout, re.M))
    for f in flags:
        check(f in known, f"{where}: moemesh client health has no flag --{f}")


def check_collect(build_dir):
    """collect.sh gathers what the image's stage copies: programs that run
    with its libraries first on the path, and the model."""
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run(["bash", os.path.join(ROOT, "deploy", "docker", "collect.sh"), build_dir, out],
                             cwd=ROOT, capture_output=True, text=True)
        check(run.returncode == 0, f"collect.sh: {run.stderr.strip()}")
        if run.returncode != 0:
            return
        check(os.path.exists(os.path.join(out, "models", "fortune-moe", "config.json")), "collect.sh: no model")
        for program in os.listdir(os.path.join(out, "bin")):
            help_run = subprocess.run([os.path.join(out, "bin", program), "--help"], capture_output=True,
                                      env=dict(os.environ, LD_LIBRARY_PATH=os.path.join(out, "lib")))
            check(help_run.returncode in (0, 1), f"collect.sh: {program} --help exits {help_run.returncode}")


def check_image(cpu_objects):
    """The Dockerfile and collect.sh against the rendered cpu overlay."""
    docker = os.path.join(ROOT, "deploy", "docker")
    with open(os.path.join(docker, "Dockerfile")) as f:
        dockerfile = f.read()
    with open(os.path.join(docker, "collect.sh")) as f:
        collect = f.read()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                check(os.path.exists(os.path.join(ROOT, src)), f"Dockerfile: COPY source {src} does not exist")
    for path in re.findall(r"bash (\S+\.sh)", dockerfile):
        check(os.path.exists(os.path.join(ROOT, path)), f"Dockerfile: {path} does not exist")
    programs = re.findall(r"(?:tools|services)/[^\s\"]+", collect)
    installed = {"/opt/moemesh/bin/" + os.path.basename(p) for p in programs}
    model = re.search(r"cp -r (\S+) ", collect).group(1)
    check(os.path.isdir(os.path.join(ROOT, model)), f"collect.sh: no model folder {model}")
    uid = re.search(r"useradd --uid (\d+)", dockerfile).group(1)
    for o in cpu_objects:
        if o["kind"] == "ConfigMap" and "MOEMESH_MODEL" in o.get("data", {}):
            check(o["data"]["MOEMESH_MODEL"] == "/opt/moemesh/models/" + os.path.basename(model),
                  f"cpu: MOEMESH_MODEL {o['data']['MOEMESH_MODEL']} is not where the image puts the model")
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = o["spec"]["template"]["spec"]
        check(str(spec["securityContext"].get("runAsUser")) == uid,
              f"cpu: {o['metadata']['name']} runs as {spec['securityContext'].get('runAsUser')}, the image as {uid}")
        for c in spec["containers"]:
            check(c["command"][0] in installed, f"cpu: {o['metadata']['name']} runs {c['command'][0]}, not in the image")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                command = c.get(probe, {}).get("exec", {}).get("command")
                if command:
                    check(command[0] in installed, f"cpu: {o['metadata']['name']}'s {probe} runs {command[0]}, "
                                                   "not in the image")


def main():
    build_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
    with tempfile.TemporaryDirectory() as made:
        subprocess.run([sys.executable, os.path.join(K8S, "gen_experts.py"), "--out", made], check=True)
        for rel in ("base/experts.yaml", "components/autoscaling/experts-hpa.yaml"):
            with open(os.path.join(made, rel)) as a, open(os.path.join(K8S, rel)) as b:
                check(a.read() == b.read(), f"{rel} is not what gen_experts.py makes: run it again")
    gen = subprocess.run([sys.executable, os.path.join(K8S, "gen_monitoring.py"), "--check"], capture_output=True,
                         text=True)
    check(gen.returncode == 0, gen.stdout.strip())
    check_collect(build_dir)
    version = kustomize_version()
    if version is None or version < 5:
        print("SKIPPED: rendering needs kubectl with kustomize 5 (kubectl 1.27 or later)")
        return 77 if not failures else 1
    for overlay in sorted(os.listdir(os.path.join(K8S, "overlays"))):
        out = subprocess.run(["kubectl", "kustomize", os.path.join(K8S, "overlays", overlay)],
                             capture_output=True, text=True)
        check(out.returncode == 0, f"{overlay}: kubectl kustomize: {out.stderr.strip()}")
        if out.returncode == 0:
            objects = [o for o in yaml.safe_load_all(out.stdout) if o]
            check_overlay(overlay, objects, build_dir)
            if overlay in ("cpu", "cpu-tls"):
                check_image(objects)
    for f in failures:
        print("FAIL", f)
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
