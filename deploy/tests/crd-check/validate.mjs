// Validates prometheus-operator objects (ServiceMonitor, PrometheusRule) against the CRD models
// of @kubernetes-models/prometheus-operator, which are generated from prometheus-operator's Go API
// types. Two checks per object, because each catches what the other misses:
//   1. schema: the package's compiled JSON-schema validator (required fields, types, enums,
//      patterns such as durations "30s"); it does not reject unknown fields;
//   2. fields: the same models' TypeScript interfaces, type-checked with `tsc --strict`, whose
//      excess-property check rejects unknown (misspelt) fields at any depth.
//
// usage: node validate.mjs OBJECTS.json
//   OBJECTS.json: [{"source": "where it came from", "object": {...}}, ...]
// Prints one line per object ("ok ..." or "error ...") and exits 1 if any object failed.
import { readFileSync, writeFileSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": { model: ServiceMonitor, iface: "IServiceMonitor" },
  "monitoring.coreos.com/v1/PrometheusRule": { model: PrometheusRule, iface: "IPrometheusRule" },
};

const items = JSON.parse(readFileSync(process.argv[2], "utf8"));
const errors = new Map(); // index -> [messages]
const fail = (i, msg) => errors.set(i, [...(errors.get(i) ?? []), msg]);

// 1. schema
items.forEach(({ object }, i) => {
  const known = MODELS[`${object.apiVersion}/${object.kind}`];
  if (!known) {
    fail(i, `no CRD model for ${object.apiVersion} ${object.kind}`);
    return;
  }
  try {
    new known.model(object).validate();
  } catch (e) {
    fail(i, `schema: ${e.message}`);
  }
});

// 2. fields: one typed constant per object, one object per line, so a diagnostic's line is its index.
const here = dirname(fileURLToPath(import.meta.url));
const file = join(here, `.check-${process.pid}.mts`);
const header = 'import type { IServiceMonitor, IPrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";\n';
const lines = items.map(({ object }, i) => {
  const known = MODELS[`${object.apiVersion}/${object.kind}`];
  return `export const o${i}: ${known ? known.iface : "never"} = ${JSON.stringify(object)};`;
});
writeFileSync(file, header + lines.join("\n") + "\n");
try {
  const program = ts.createProgram([file], {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
  });
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const text = ts.flattenDiagnosticMessageText(d.messageText, " ");
    if (d.file && d.file.fileName === file && d.start !== undefined) {
      const line = d.file.getLineAndCharacterOfPosition(d.start).line - 1;
      if (line >= 0 && line < items.length) {
        if (MODELS[`${items[line].object.apiVersion}/${items[line].object.kind}`]) fail(line, `fields: TS${d.code} ${text}`);
        continue;
      }
    }
    // A problem with the checker itself (e.g. the package's types not found): fail everything.
    items.forEach((_, i) => fail(i, `checker: TS${d.code} ${text}`));
  }
} finally {
  unlinkSync(file);
}

items.forEach(({ source, object }, i) => {
  const name = `${object.kind}/${object.metadata?.name ?? "?"} (${source})`;
  if (errors.has(i)) for (const msg of errors.get(i)) console.log(`error ${name}: ${msg}`);
  else console.log(`ok ${name}`);
});
process.exit(errors.size ? 1 : 0);
