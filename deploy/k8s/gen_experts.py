#!/usr/bin/env python3
"""Writes base/experts.yaml (one Deployment, Service and PodDisruptionBudget per
expert shard, so that each shard scales on its own) and
components/autoscaling/experts-hpa.yaml (a HorizontalPodAutoscaler per shard,
on that shard's busy time) (docs/DEPLOY.md).

  deploy/k8s/gen_experts.py [--shards 2] [--out DIR (default deploy/k8s)]

The files are checked in; tests/deploy_k8s_test.py checks that they are what
this script makes. With another shard count, also set MOEMESH_EXPERTS in
base/kustomization.yaml (dns:///moemesh-expert-0:50051,...,dns:///moemesh-expert-N-1:50051).
"""
import argparse
import pathlib

TEMPLATE = """\
# Expert shard {i} of {n}: the experts e with e mod {n} == {i}.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: moemesh-expert-{i}
  labels: {{app.kubernetes.io/name: moemesh-expert, app.kubernetes.io/component: expert, moemesh.io/shard: "{i}"}}
spec:
  replicas: 1
  selector:
    matchLabels: {{app.kubernetes.io/name: moemesh-expert, moemesh.io/shard: "{i}"}}
  template:
    metadata:
      labels: {{app.kubernetes.io/name: moemesh-expert, app.kubernetes.io/component: expert, moemesh.io/shard: "{i}"}}
    spec:
      terminationGracePeriodSeconds: 40
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        seccompProfile: {{type: RuntimeDefault}}
      containers:
        - name: expert
          image: moemesh
          command: [/opt/moemesh/bin/moemesh-expert]
          args:
            - --model=$(MOEMESH_MODEL)
            - --shard-index={i}
            - --num-shards={n}
            - --host=0.0.0.0
            - --port=50051
            - --data-port=50052
            - --metrics-port=9090
            - --drain-grace-s=30
            - --insecure
          envFrom:
            - configMapRef: {{name: moemesh-model}}
          ports:
            - {{name: grpc, containerPort: 50051}}
            - {{name: data, containerPort: 50052}}
            - {{name: metrics, containerPort: 9090}}
          startupProbe: {{grpc: {{port: 50051}}, periodSeconds: 5, failureThreshold: 120}}
          readinessProbe: {{grpc: {{port: 50051}}, periodSeconds: 5, failureThreshold: 1}}
          livenessProbe: {{grpc: {{port: 50051}}, periodSeconds: 10, failureThreshold: 6}}
          lifecycle:
            preStop: {{sleep: {{seconds: 5}}}}
          resources:
            requests: {{cpu: "1", memory: 1Gi}}
            limits: {{memory: 4Gi}}
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {{drop: [ALL]}}
          volumeMounts:
            - {{name: tmp, mountPath: /tmp}}
      volumes:
        - {{name: tmp, emptyDir: {{}}}}
---
# Headless: its name resolves to every ready replica, which routers ask for
# again every --experts-resolve-ms (dns:///moemesh-expert-{i}:50051).
apiVersion: v1
kind: Service
metadata:
  name: moemesh-expert-{i}
  labels: {{app.kubernetes.io/name: moemesh-expert, moemesh.io/shard: "{i}"}}
spec:
  clusterIP: None
  selector: {{app.kubernetes.io/name: moemesh-expert, moemesh.io/shard: "{i}"}}
  ports:
    - {{name: grpc, port: 50051, targetPort: grpc}}
    - {{name: data, port: 50052, targetPort: data}}
    - {{name: metrics, port: 9090, targetPort: metrics}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: moemesh-expert-{i}
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {{app.kubernetes.io/name: moemesh-expert, moemesh.io/shard: "{i}"}}
"""


HPA_TEMPLATE = """\
# Shard {i}: more replicas while its workers are busy more than 70% of the
# time (moemesh_expert_busy_ratio: prometheus-adapter-rules.yaml).
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: moemesh-expert-{i}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: moemesh-expert-{i}}}
  minReplicas: 1
  maxReplicas: 8
  metrics:
    - type: Pods
      pods:
        metric: {{name: moemesh_expert_busy_ratio}}
        target: {{type: AverageValue, averageValue: 700m}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 300}}
"""


def render(template: str, shards: int) -> str:
    header = "# Made by deploy/k8s/gen_experts.py --shards {}; do not edit.\n".format(shards)
    return header + "---\n".join(template.format(i=i, n=shards) for i in range(shards))


def files(shards: int) -> dict:
    """Path (under deploy/k8s) -> contents."""
    return {
        "base/experts.yaml": render(TEMPLATE, shards),
        "components/autoscaling/experts-hpa.yaml": render(HPA_TEMPLATE, shards),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent))
    args = parser.parse_args()
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    for name, text in files(args.shards).items():
        path = pathlib.Path(args.out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    main()
