#!/usr/bin/env node
// Checks a kustomization of Kubernetes manifests (default: deploy/k8s) the way an API server would
// before anything reaches a cluster, and fails on the first kind of mistake a person makes there: a
// misspelled or misplaced field, a wrong type, a missing required field.
//
//   node tests/deploy/validate_k8s.mjs [DIR] [--no-kubectl] [--kubectl=PATH] [--flags-from=FILE]
//
// 1. Renders DIR with `kubectl kustomize DIR` ($KUBECTL or kubectl on PATH; Debian 12's
//    kubernetes-client 1.20 and newer ones both work), or with --no-kubectl reads the files that
//    kustomization.yaml lists under `resources` itself.
// 2. Parses every YAML document (npm `yaml`, YAML 1.1 as kubectl reads it; duplicate keys are errors).
// 3. Validates each object with the compiled OpenAPI schema of its apiVersion and kind from the npm
//    `kubernetes-models` package: types, formats, required fields. Those schemas let unknown fields
//    through (as the API server does unless asked for strict field validation), so each object is
//    handed to the schema's validator behind a Proxy that records which properties the validator
//    reads: it reads every property its schema defines, so a key it never read is an unknown field.
// 4. Checks what the schema cannot see: selectors that select the pod template, Services and
//    PodDisruptionBudgets that select a workload, ConfigMaps that the volumes name, probe ports that
//    the container declares, and for sageserve's config file (a ConfigMap key ending in .conf) that
//    every flag exists in server/app/main.cc and that terminationGracePeriodSeconds outlasts the
//    preStop sleep plus --session_drain plus --grace_period.
//
// Every error is printed as `ERROR <file>: <Kind>/<name>: <path>: <message>`; exit 0 when there is
// none, 1 when there are errors, 2 when the check could not run (no packages, no kubectl, bad usage).
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..");
const require = createRequire(import.meta.url);

function setupError(message) {
  console.error(`validate_k8s: ${message}`);
  process.exit(2);
}

// ---- arguments -----------------------------------------------------------------------------------
let dir = path.join(repo, "deploy", "k8s");
let useKubectl = true;
let kubectl = process.env.KUBECTL || "kubectl";
let flagsFrom = path.join(repo, "server", "app", "main.cc");
for (const a of process.argv.slice(2)) {
  if (a === "--no-kubectl") useKubectl = false;
  else if (a.startsWith("--kubectl=")) kubectl = a.slice("--kubectl=".length);
  else if (a.startsWith("--flags-from=")) flagsFrom = a.slice("--flags-from=".length);
  else if (a === "-h" || a === "--help") {
    console.log("usage: node validate_k8s.mjs [DIR] [--no-kubectl] [--kubectl=PATH] [--flags-from=FILE]");
    process.exit(0);
  } else if (a.startsWith("-")) setupError(`unknown option ${a}`);
  else dir = path.resolve(a);
}

// ---- packages ------------------------------------------------------------------------------------
let YAML;
try {
  YAML = require("yaml");
  require("kubernetes-models/v1");
} catch (e) {
  setupError(`the npm packages yaml and kubernetes-models are missing (${e.code || e.message}); ` +
             "install them with `npm ci --prefix tests/deploy` (scripts/bootstrap.sh does)");
}

// ---- errors --------------------------------------------------------------------------------------
const errors = [];
function report(file, obj, where, message) {
  const who = obj ? `${obj.kind ?? "?"}/${obj.metadata?.name ?? "?"}: ` : "";
  errors.push(`ERROR ${file}: ${who}${where ? where + ": " : ""}${message}`);
}

// JSON pointer (/spec/containers/0/name) to a field path (spec.containers[0].name).
function fieldPath(parts) {
  let out = "";
  for (const p of parts) {
    if (/^\d+$/.test(String(p))) out += `[${p}]`;
    else if (/^[A-Za-z_$][\w$-]*$/.test(p)) out += out ? `.${p}` : p;
    else out += `[${JSON.stringify(p)}]`;
  }
  return out;
}
const pointerPath = (pointer) =>
  fieldPath(pointer.split("/").slice(1).map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~")));

// ---- reading YAML --------------------------------------------------------------------------------
// YAML 1.1, as kubectl (go-yaml) reads manifests: 0440 is octal, yes/no are booleans.
function parseDocuments(text, file) {
  const out = [];
  for (const doc of YAML.parseAllDocuments(text, { version: "1.1", uniqueKeys: true, prettyErrors: true })) {
    for (const e of doc.errors) report(file, null, "", `YAML: ${e.message.split("\n")[0]}`);
    if (doc.errors.length) continue;
    const value = doc.toJS({ maxAliasCount: 100 });
    if (value === null || value === undefined) continue;  // an empty document (a trailing ---)
    if (typeof value !== "object" || Array.isArray(value)) {
      report(file, null, "", "a YAML document that is not a mapping");
      continue;
    }
    out.push(value);
  }
  return out;
}

// kustomize's Kustomization fields (kubectl 1.20's kustomize knows a subset; it ignores the rest).
const kustomizationFields = new Set([
  "apiVersion", "kind", "metadata", "namespace", "namePrefix", "nameSuffix", "commonLabels", "labels",
  "commonAnnotations", "resources", "bases", "components", "crds", "images", "replicas",
  "configMapGenerator", "secretGenerator", "generatorOptions", "patches", "patchesStrategicMerge",
  "patchesJson6902", "vars", "configurations", "generators", "transformers", "validators", "openapi",
  "buildMetadata", "sortOptions", "helmCharts", "helmGlobals",
]);

const kustomizationFile = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
  .map((f) => path.join(dir, f)).find((f) => fs.existsSync(f));
if (!kustomizationFile) setupError(`${dir}: no kustomization.yaml`);
const rel = (f) => path.relative(process.cwd(), f) || f;

const kustomization = parseDocuments(fs.readFileSync(kustomizationFile, "utf8"), rel(kustomizationFile))[0] ?? {};
for (const key of Object.keys(kustomization)) {
  if (!kustomizationFields.has(key)) report(rel(kustomizationFile), null, key, `unknown kustomization field "${key}"`);
}

// The source file of each object (by kind and name), for the error messages; and the objects
// themselves for --no-kubectl.
const sourceOf = new Map();
const sourceObjects = [];
for (const r of kustomization.resources ?? []) {
  const file = path.join(dir, String(r));
  if (!fs.existsSync(file)) {
    report(rel(kustomizationFile), null, "resources", `${r}: no such file`);
    continue;
  }
  if (fs.statSync(file).isDirectory()) {
    if (!useKubectl) report(rel(kustomizationFile), null, "resources", `${r}: a directory (needs kubectl)`);
    continue;
  }
  for (const obj of parseDocuments(fs.readFileSync(file, "utf8"), rel(file))) {
    const key = `${obj.kind}/${obj.metadata?.name}`;
    if (sourceOf.has(key)) report(rel(file), obj, "", `also defined in ${sourceOf.get(key)}`);
    sourceOf.set(key, rel(file));
    sourceObjects.push(obj);
  }
}

// ---- rendering -----------------------------------------------------------------------------------
let objects = sourceObjects;
let renderedBy = "its resources read directly (--no-kubectl)";
if (useKubectl) {
  const run = spawnSync(kubectl, ["kustomize", dir], { encoding: "utf8", maxBuffer: 64 << 20 });
  if (run.error) {
    setupError(run.error.code === "ENOENT"
      ? `${kubectl} not found: install kubectl (Debian: apt-get install kubernetes-client; scripts/bootstrap.sh ` +
        "does), set $KUBECTL, or pass --no-kubectl to read the resources without kustomize"
      : `${kubectl} kustomize: ${run.error.message}`);
  }
  if (run.status !== 0) {
    // Still check the resources as they are, for whatever else is wrong in them.
    report(rel(kustomizationFile), null, "", `kubectl kustomize failed: ${run.stderr.trim()}`);
    renderedBy = `not rendered (${kubectl} kustomize failed), its resources read directly`;
  } else {
    objects = parseDocuments(run.stdout, "(kubectl kustomize output)");
    renderedBy = `rendered by ${kubectl} kustomize`;
  }
}
const fileOf = (obj) => sourceOf.get(`${obj.kind}/${obj.metadata?.name}`) ?? "(made by kustomize)";

// ---- schema validation ---------------------------------------------------------------------------
// The model class of apiVersion/kind: kubernetes-models/<group>/<version> (core: kubernetes-models/v1).
function modelOf(apiVersion, kind) {
  let mod;
  try {
    mod = require(`kubernetes-models/${apiVersion}`);
  } catch {
    return null;
  }
  const cls = mod[kind];
  return cls && cls.apiVersion === apiVersion && cls.kind === kind && typeof cls.prototype.validate === "function"
    ? cls : null;
}

// Wraps `value` so that every property the validator reads is recorded; `nodes` gets one entry per
// object or array reached: { path, value, read }.
function tracked(value, at, nodes) {
  if (value === null || typeof value !== "object") return value;
  const node = { path: at, value, read: new Set() };
  nodes.push(node);
  const children = new Map();
  return new Proxy(value, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof prop !== "string") return v;
      node.read.add(prop);
      if (v === null || typeof v !== "object" || !Object.prototype.hasOwnProperty.call(target, prop)) return v;
      if (!children.has(prop)) children.set(prop, tracked(v, at.concat(prop), nodes));
      return children.get(prop);
    },
    has(target, prop) {
      if (typeof prop === "string") node.read.add(prop);
      return Reflect.has(target, prop);
    },
  });
}

function editDistance(a, b) {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; ++j) d[0][j] = j;
  for (let i = 1; i <= a.length; ++i) {
    for (let j = 1; j <= b.length; ++j) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

function validateSchema(obj) {
  const file = fileOf(obj);
  if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
    report(file, obj, "", "apiVersion and kind must be strings");
    return;
  }
  const cls = modelOf(obj.apiVersion, obj.kind);
  if (!cls) {
    report(file, obj, "", `unknown apiVersion/kind ${obj.apiVersion} ${obj.kind} (not in kubernetes-models)`);
    return;
  }
  const nodes = [];
  try {
    cls.prototype.validate.call(tracked(obj, [], nodes));
  } catch (e) {
    if (!Array.isArray(e.errors)) throw e;
    // One line per field: a oneOf (int-or-string, quantity) folds its alternatives' complaints into it.
    const byPath = new Map();
    for (const err of e.errors) {
      const at = pointerPath(err.instancePath) || "(top)";
      if (!byPath.has(at)) byPath.set(at, []);
      byPath.get(at).push(err);
    }
    for (const [at, errs] of byPath) {
      const text = (err) => err.keyword === "enum" ? `must be one of ${JSON.stringify(err.params.allowedValues)}`
                                                   : err.message;
      const alternatives = errs.filter((err) => err.keyword === "oneOf" || err.keyword === "anyOf");
      const messages = [...new Set(errs.filter((err) => !alternatives.includes(err)).map(text))];
      if (alternatives.length) report(file, obj, at, `matches none of its forms (${messages.join("; ")})`);
      else for (const m of messages) report(file, obj, at, m);
    }
  }
  for (const node of nodes) {
    if (Array.isArray(node.value)) continue;
    for (const key of Object.keys(node.value)) {
      if (node.read.has(key)) continue;
      const near = [...node.read].filter((k) => !(k in node.value) && editDistance(k, key) <= 2);
      report(file, obj, fieldPath(node.path.concat(key)),
             `unknown field "${key}"${near.length ? ` (did you mean "${near[0]}"?)` : ""}`);
    }
  }
}

// ---- what the schema cannot see ------------------------------------------------------------------
const workloads = objects.filter((o) => ["Deployment", "StatefulSet", "DaemonSet"].includes(o.kind));
const matches = (selector, labels) =>
  selector && Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);
const podLabels = (w) => w.spec?.template?.metadata?.labels;
const configMaps = new Map(objects.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata?.name, o]));

let serverFlags = null;
function flagsOfServer() {
  if (serverFlags) return serverFlags;
  serverFlags = new Set();
  let text = "";
  try {
    text = fs.readFileSync(flagsFrom, "utf8");
  } catch (e) {
    setupError(`cannot read the server's flags from ${flagsFrom} (${e.code}); pass --flags-from=FILE`);
  }
  for (const m of text.matchAll(/ABSL_FLAG\(\s*[^,]+,\s*(\w+)\s*,/g)) serverFlags.add(m[1]);
  if (serverFlags.size === 0) setupError(`${flagsFrom}: no ABSL_FLAG found`);
  return serverFlags;
}

// sageserve's config file: flag=value lines. Returns a Map of flag -> value.
function checkConfigFile(cm, key) {
  const values = new Map();
  const where = `data[${JSON.stringify(key)}]`;
  String(cm.data[key]).split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const m = /^(?:--)?([A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (!m) {
      report(fileOf(cm), cm, `${where} line ${i + 1}`, `not a flag=value line: ${JSON.stringify(line)}`);
      return;
    }
    if (!flagsOfServer().has(m[1])) {
      const near = [...flagsOfServer()].filter((f) => editDistance(f, m[1]) <= 2);
      report(fileOf(cm), cm, `${where} line ${i + 1}`,
             `sageserve has no flag --${m[1]}${near.length ? ` (did you mean --${near[0]}?)` : ""}`);
    }
    values.set(m[1], m[2].trim());
  });
  return values;
}

// absl::Duration text ("2m", "1h30m", "500ms", "0") in seconds; NaN when it is not one.
function durationSeconds(text) {
  if (text === "0") return 0;
  const unit = { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6, ns: 1e-9 };
  let total = 0;
  let rest = text;
  while (rest) {
    const m = /^(\d+(?:\.\d*)?)(h|ms|m|s|us|ns)/.exec(rest);
    if (!m) return NaN;
    total += Number(m[1]) * unit[m[2]];
    rest = rest.slice(m[0].length);
  }
  return text ? total : NaN;
}

function checkWorkload(w) {
  const file = fileOf(w);
  const pod = w.spec?.template?.spec ?? {};
  if (!matches(w.spec?.selector?.matchLabels, podLabels(w))) {
    report(file, w, "spec.selector.matchLabels", "does not select the pod template's labels");
  }
  const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v]));
  for (const v of volumes.values()) {
    if (v.configMap && !v.configMap.optional && !configMaps.has(v.configMap.name)) {
      report(file, w, `spec.template.spec.volumes[${v.name}]`, `ConfigMap ${v.configMap.name} is not in the kustomization`);
    }
  }
  const claimNames = new Set((w.spec?.volumeClaimTemplates ?? []).map((c) => c.metadata?.name));
  (pod.containers ?? []).forEach((c, ci) => {
    const at = `spec.template.spec.containers[${ci}]`;
    const portNames = new Set((c.ports ?? []).map((p) => p.name));
    const portNumbers = new Set((c.ports ?? []).map((p) => Number(p.containerPort)));
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const p = c[probe];
      const port = p?.grpc?.port ?? p?.httpGet?.port ?? p?.tcpSocket?.port;
      if (port === undefined) continue;
      if (typeof port === "string" ? !portNames.has(port) : !portNumbers.has(Number(port))) {
        report(file, w, `${at}.${probe}`, `port ${port} is not one of the container's ports`);
      }
    }
    for (const m of c.volumeMounts ?? []) {
      if (!volumes.has(m.name) && !claimNames.has(m.name)) {
        report(file, w, `${at}.volumeMounts[${m.name}]`, `no volume named ${m.name}`);
      }
    }
    // sageserve: --config=PATH on a mounted ConfigMap.
    const argv = [...(c.command ?? []), ...(c.args ?? [])].map(String);
    const config = argv.find((a) => a.startsWith("--config="))?.slice("--config=".length);
    if (!config) return;
    for (const a of argv.slice(1)) {
      const flag = /^--([A-Za-z0-9_]+)(=|$)/.exec(a)?.[1];
      if (flag && !flagsOfServer().has(flag)) report(file, w, `${at}.command`, `sageserve has no flag --${flag}`);
    }
    const mount = (c.volumeMounts ?? []).find((m) => config.startsWith(m.mountPath.replace(/\/?$/, "/")));
    const cm = mount && volumes.get(mount.name)?.configMap && configMaps.get(volumes.get(mount.name).configMap.name);
    const key = mount && path.posix.relative(mount.mountPath, config);
    if (!cm || cm.data?.[key] === undefined) {
      report(file, w, `${at}.command`, `--config=${config} is not a key of a ConfigMap mounted by this container`);
      return;
    }
    const flags = checkConfigFile(cm, key);
    const drain = durationSeconds(flags.get("session_drain") ?? "0");
    const grace = durationSeconds(flags.get("grace_period") ?? "30s");
    if (Number.isNaN(drain) || Number.isNaN(grace)) {
      report(fileOf(cm), cm, `data[${JSON.stringify(key)}]`, "session_drain or grace_period is not a duration");
      return;
    }
    const pre = c.lifecycle?.preStop?.exec?.command;
    const preStop = pre && /(^|\/)sleep$/.test(pre[0]) ? Number(pre[1]) || 0 : 0;
    const budget = pod.terminationGracePeriodSeconds ?? 30;
    const need = preStop + drain + grace + 1;  // +1: the server's drain linger and exit
    if (budget < need) {
      report(file, w, "spec.template.spec.terminationGracePeriodSeconds",
             `${budget} s does not cover preStop ${preStop} s + session_drain ${drain} s + grace_period ` +
             `${grace} s + 1 s (${need} s): the kubelet would kill the server mid-drain`);
    }
  });
}

for (const obj of objects) validateSchema(obj);
for (const w of workloads) checkWorkload(w);
for (const o of objects) {
  if (o.kind === "Service" && o.spec?.selector && !workloads.some((w) => matches(o.spec.selector, podLabels(w)))) {
    report(fileOf(o), o, "spec.selector", "selects no workload's pods");
  }
  if (o.kind === "PodDisruptionBudget" &&
      !workloads.some((w) => matches(o.spec?.selector?.matchLabels, podLabels(w)))) {
    report(fileOf(o), o, "spec.selector.matchLabels", "selects no workload's pods");
  }
}

// By file, in the order found within each.
errors.sort((a, b) => a.split(": ")[0].localeCompare(b.split(": ")[0]));
for (const e of errors) console.log(e);
const summary = `${objects.length} objects in ${rel(dir)}, ${renderedBy}`;
if (errors.length) {
  console.log(`validate_k8s: FAILED: ${errors.length} error${errors.length === 1 ? "" : "s"} in ${summary}`);
  process.exit(1);
}
console.log(`validate_k8s: ok: ${summary}`);
