// Every object that every overlay of deploy/k8s renders (`kubectl kustomize`)
// is checked offline against the Kubernetes API's OpenAPI schemas (npm
// kubernetes-models; @kubernetes-models/prometheus-operator for the
// ServiceMonitor and PrometheusRule): a wrong type, a value outside an
// enumeration or a missing required field fails here, not at `kubectl
// apply`. (Unknown fields pass: the schemas allow them, and only a server's
// strict field validation refuses them.) The validator is first shown to
// refuse wrong objects,
// so that a check that passes means something. Exit 77 (skipped) without
// kubectl with kustomize 5; the schemas are installed by `make deps` under
// tools/k8s_schemas.
//   node tests/deploy_k8s_schema_test.mjs
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const modules = new URL('../tools/k8s_schemas/node_modules/', import.meta.url);
const yaml = (await import(new URL('js-yaml/dist/js-yaml.mjs', modules))).default;

// The model class for an object's apiVersion and kind, or null where no
// schema package holds it.
async function modelFor(apiVersion, kind) {
  const path = apiVersion.startsWith('monitoring.coreos.com/')
    ? `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}.js`
    : `kubernetes-models/${apiVersion}/${kind}.js`;
  const file = new URL(path, modules);
  if (!existsSync(file)) return null;
  return (await import(file))[kind];
}

// The schema's complaints about `object` ('' where it holds).
async function complaints(object) {
  const Model = await modelFor(object.apiVersion, object.kind);
  if (Model === null) return `no schema for ${object.apiVersion} ${object.kind}`;
  try {
    new Model(object).validate();
    return '';
  } catch (e) {
    return String(e.message ?? e);
  }
}

function kustomizeMajor() {
  try {
    const out = execFileSync('kubectl', ['version', '--client', '-o', 'json'], { encoding: 'utf8' });
    const m = /^v?(\d+)/.exec(JSON.parse(out).kustomizeVersion ?? '');
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };

// The validator refuses what an API server would.
const deployment = {
  apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'x' },
  spec: {
    selector: { matchLabels: { app: 'x' } },
    template: { metadata: { labels: { app: 'x' } }, spec: { containers: [{ name: 'x', image: 'x' }] } },
  },
};
check(await complaints(deployment) === '', `a valid Deployment is refused: ${await complaints(deployment)}`);
for (const [what, wrong] of [
  ['replicas as a string', { ...deployment, spec: { ...deployment.spec, replicas: 'two' } }],
  ['no selector', { ...deployment, spec: { template: deployment.spec.template } }],
  ['a Service port without its number', { apiVersion: 'v1', kind: 'Service', metadata: { name: 'x' },
                                          spec: { ports: [{ name: 'grpc', targetPort: 50051 }] } }],
  ['an image pull policy the API lacks', { ...deployment, spec: { ...deployment.spec, template: { ...deployment.spec.template,
    spec: { containers: [{ name: 'x', image: 'x', imagePullPolicy: 'Sometimes' }] } } } }],
  ['a ServiceMonitor without endpoints', { apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor',
                                           metadata: { name: 'x' }, spec: { selector: {} } }],
]) {
  check(await complaints(wrong) !== '', `the validator takes ${what}`);
}

const major = kustomizeMajor();
if (major === null || major < 5) {
  console.log('SKIPPED: rendering needs kubectl with kustomize 5 (kubectl 1.27 or later)');
  for (const f of failures) console.log('FAIL', f);
  process.exit(failures.length ? 1 : 77);
}
let objects = 0;
const overlays = `${root}deploy/k8s/overlays`;
for (const overlay of readdirSync(overlays).sort()) {
  let rendered;
  try {
    rendered = execFileSync('kubectl', ['kustomize', `${overlays}/${overlay}`], { encoding: 'utf8' });
  } catch (e) {
    check(false, `${overlay}: kubectl kustomize: ${e.stderr ?? e}`);
    continue;
  }
  for (const object of yaml.loadAll(rendered)) {
    if (!object) continue;
    ++objects;
    const c = await complaints(object);
    check(c === '', `${overlay}: ${object.kind} ${object.metadata?.name}: ${c}`);
  }
}
check(objects > 0, 'no overlay rendered an object');
for (const f of failures) console.log('FAIL', f);
console.log(`${objects} objects checked against the API's schemas; ${failures.length} failures`);
process.exit(failures.length ? 1 : 0);
