#!/usr/bin/env node
// The check of the check: runs validate_k8s.mjs on a fixture with known mistakes and passes only if
// it exits 1 and reports exactly the expected errors, so a validator that lets everything through
// (or one that cannot run at all: exit 2) fails here.
//
//   node tests/deploy/expect_errors.mjs FIXTURE_DIR EXPECTED_FILE [validate_k8s.mjs options]
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const [fixture, expectedFile, ...options] = process.argv.slice(2);
if (!fixture || !expectedFile) {
  console.error("usage: node expect_errors.mjs FIXTURE_DIR EXPECTED_FILE [validate_k8s.mjs options]");
  process.exit(2);
}
const validator = path.join(path.dirname(fileURLToPath(import.meta.url)), "validate_k8s.mjs");
const run = spawnSync(process.execPath, [validator, fixture, ...options], { encoding: "utf8" });
process.stdout.write(run.stdout);
process.stderr.write(run.stderr);

if (run.status === 2 || run.status === null) {
  console.log(`expect_errors: FAILED: validate_k8s.mjs could not run (${run.status ?? run.signal}; reason above)`);
  process.exit(1);
}
const problems = [];
if (run.status !== 1) problems.push(`validate_k8s.mjs exited ${run.status}, not 1 (errors found)`);
const expected = fs.readFileSync(expectedFile, "utf8").split("\n").map((l) => l.trim())
  .filter((l) => l && !l.startsWith("#"));
const reported = run.stdout.split("\n").filter((l) => l.startsWith("ERROR "));
for (const e of expected) {
  const hits = reported.filter((l) => l.includes(e)).length;
  if (hits !== 1) problems.push(`expected once, reported ${hits} times: ${e}`);
}
for (const l of reported) {
  if (!expected.some((e) => l.includes(e))) problems.push(`not expected: ${l}`);
}
if (problems.length) {
  for (const p of problems) console.log(`expect_errors: ${p}`);
  console.log(`expect_errors: FAILED (${problems.length} problems)`);
  process.exit(1);
}
console.log(`expect_errors: ok: all ${expected.length} expected errors reported, nothing else`);
