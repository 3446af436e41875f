#!/usr/bin/env python3
"""Runs the rendered cpu overlay's containers (deploy/k8s) as local processes,
one pod of each workload: each container's exact command, arguments and
environment, with its ports remapped to free loopback ports, the Services'
names resolved to them, and the image's paths (/opt/moemesh) to this checkout
and build. Then generates through the gateway, over gRPC and over the HTTP
API, so that a wrong flag or address in a manifest fails CI. Then the same
for the cpu-tls overlay (the tls component), with a certificate made here
(openssl) in place of the Secret: every port speaks TLS, each pod's exec
probes are run and must say SERVING, and the generations go over TLS and
HTTPS.

  deploy_k8s_run_test.py BUILD_DIR

Rendering needs kubectl with kustomize 5; without it the test is skipped
(exit 77).
"""
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_k8s_test import BINARIES, K8S, ROOT, kustomize_version  # noqa: E402


_taken = set()


def free_port():
    # Below Linux's ephemeral range (32768 and up): the tests that run beside
    # this one bind port 0 there, and could take a port chosen here before
    # its process binds it.
    while True:
        port = random.randrange(20000, 32000)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port


def make_certs(out):
    """A CA and one certificate of it for every service, server and client,
    for the names the pods are reached by here (localhost, 127.0.0.1)."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-days", "2", "-subj", "/CN=moemesh-test-ca")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "tls.key", "-out",
        "tls.csr", "-subj", "/CN=moemesh")
    with open(os.path.join(out, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
                "basicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt",
        "-days", "2", "-extfile", "ext.cnf")


def run_overlay(overlay, build_dir):
    """Runs `overlay`'s pods and generates through them; 0 when it works."""
    rendered = subprocess.run(["kubectl", "kustomize", os.path.join(K8S, "overlays", overlay)], capture_output=True,
                              text=True, check=True).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    config = {}
    for o in objects:
        if o["kind"] == "ConfigMap":
            config.update(o.get("data", {}))
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    services = [o for o in objects if o["kind"] == "Service"]
    # Each workload's pod 0 gets its own ports; a Service name (and a
    # StatefulSet pod's name under its Service) leads to its pod's ports.
    pods = {}
    for w in workloads:
        c = w["spec"]["template"]["spec"]["containers"][0]
        pods[w["metadata"]["name"]] = {p["name"]: (p["containerPort"], free_port()) for p in c["ports"]}
    names = {}
    for s in services:
        for w in workloads:
            labels = w["spec"]["template"]["metadata"]["labels"]
            if all(labels.get(k) == v for k, v in s["spec"]["selector"].items()):
                names[s["metadata"]["name"]] = w["metadata"]["name"]
                if w["kind"] == "StatefulSet":
                    names[f"{w['metadata']['name']}-0.{s['metadata']['name']}"] = w["metadata"]["name"]
    scratch = tempfile.mkdtemp(prefix="deploy_k8s_run_")
    tls = os.path.join(scratch, "tls")
    os.mkdir(tls)
    make_certs(tls)

    def local_port(pod, container_port):
        return next(local for (cport, local) in pods[pod].values() if cport == container_port)

    def rewrite(arg, pod):
        arg = re.sub(r"\$\((\w+)\)", lambda m: config[m.group(1)], arg)
        # NAME:PORT of a Service (or a StatefulSet pod) -> 127.0.0.1:its pod's
        # port; localhost:PORT (a probe's) -> this pod's.
        def address(m):
            if m.group(1) == "localhost":
                return f"localhost:{local_port(pod, int(m.group(2)))}"
            return f"127.0.0.1:{local_port(names[m.group(1)], int(m.group(2)))}"
        arg = re.sub(r"([a-z0-9.-]+):(\d+)",
                     lambda m: address(m) if m.group(1) in names or m.group(1) == "localhost" else m.group(0), arg)
        for flag, name in (("--port", "grpc"), ("--data-port", "data"), ("--metrics-port", "metrics"),
                           ("--http-port", "http")):
            if arg.startswith(flag + "="):
                arg = f"{flag}={pods[pod][name][1]}"
        arg = arg.replace("/opt/moemesh/models/", os.path.join(ROOT, "models") + "/")
        arg = arg.replace("/opt/moemesh/bin/moemesh", os.path.join(build_dir, "tools/moemesh/moemesh"))
        arg = arg.replace("/etc/moemesh/tls/", tls + "/")
        return arg.replace("/var/lib/moemesh-kvcache", os.path.join(scratch, pod))

    order = {"kvcache": 0, "expert": 1, "router": 2, "gateway": 3}
    workloads.sort(key=lambda w: order[w["metadata"]["labels"]["app.kubernetes.io/component"]])
    procs = []
    try:
        for w in workloads:
            name = w["metadata"]["name"]
            c = w["spec"]["template"]["spec"]["containers"][0]
            argv = [os.path.join(build_dir, BINARIES[c["command"][0]])] + [rewrite(a, name) for a in c["args"]]
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=dict(os.environ, **config))
            procs.append((name, p))
            deadline = time.time() + 120
            said = []
            while True:
                line = p.stdout.readline()
                if line.startswith("listening on "):
                    break
                said.append(line)
                if not line and p.poll() is not None or time.time() > deadline:
                    print(f"FAIL {overlay}: {name} did not start: {' '.join(argv)}\n{''.join(said[-20:])}")
                    return 1
            # Its later output, drained so that it never blocks on a full pipe.
            threading.Thread(target=lambda f=p.stdout: [None for _ in f], daemon=True).start()
        # The exec probes (the tls component's), as the kubelet runs them.
        probes = 0
        for w in workloads:
            c = w["spec"]["template"]["spec"]["containers"][0]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                command = c.get(probe, {}).get("exec", {}).get("command")
                if not command:
                    continue
                run = subprocess.run([rewrite(a, w["metadata"]["name"]) for a in command], capture_output=True,
                                     text=True, timeout=c[probe].get("timeoutSeconds", 1) + 10)
                if run.returncode != 0 or run.stdout.strip() != "SERVING":
                    print(f"FAIL {overlay}: {w['metadata']['name']}'s {probe}: {run.stdout} {run.stderr}")
                    return 1
                probes += 1
        gateway = pods["moemesh-gateway"]
        secure = overlay.endswith("-tls")
        tls_flags = [f"--tls-ca={tls}/ca.crt", f"--tls-cert={tls}/tls.crt", f"--tls-key={tls}/tls.key"] if secure \
            else []
        out = subprocess.run([os.path.join(build_dir, "tools/moemesh/moemesh"), "client", "generate",
                              f"--target=127.0.0.1:{gateway['grpc'][1]}", "--prompt=Once upon a time",
                              "--max-new-tokens=8", "--output=json", *tls_flags], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0 or len(json.loads(out.stdout)["token_ids"]) == 0:
            print(f"FAIL {overlay}: generation over gRPC: {out.stdout} {out.stderr}")
            return 1
        request = urllib.request.Request(
            f"{'https' if secure else 'http'}://127.0.0.1:{gateway['http'][1]}/v1/completions",
            data=json.dumps({"prompt": "Once upon a time", "max_tokens": 8}).encode(),
            headers={"Content-Type": "application/json"})
        context = ssl.create_default_context(cafile=os.path.join(tls, "ca.crt")) if secure else None
        with urllib.request.urlopen(request, timeout=60, context=context) as r:
            text = json.loads(r.read())["choices"][0]["text"]
        print(f"ok {overlay}: {len(procs)} pods, {probes} exec probes SERVING; gRPC gave "
              f"{len(json.loads(out.stdout)['token_ids'])} tokens, HTTP{'S' if secure else ''} {text!r}")
        return 0
    finally:
        for _, p in reversed(procs):
            p.terminate()
        for _, p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    build_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
    version = kustomize_version()
    if version is None or version < 5:
        print("SKIPPED: rendering needs kubectl with kustomize 5 (kubectl 1.27 or later)")
        return 77
    status = 0
    for overlay in ("cpu", "cpu-tls"):
        status = run_overlay(overlay, build_dir) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
