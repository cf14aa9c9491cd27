#!/usr/bin/env node
// After tsc: put the editor files (html, locales, icons) and the PowerShell scripts beside the
// emitted js, and write the JSON Schemas as files users can use on their own.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist');

function copyTree(from, to, keep) {
  if (!fs.existsSync(from)) return 0;
  let n = 0;
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    const src = path.join(from, entry.name);
    const dst = path.join(to, entry.name);
    if (entry.isDirectory()) n += copyTree(src, dst, keep);
    else if (keep(src)) {
      fs.mkdirSync(to, { recursive: true });
      fs.copyFileSync(src, dst);
      n++;
    }
  }
  return n;
}

const editorFile = (f) => /\.(html|json|png|svg)$/.test(f) && !f.endsWith(path.join('shared', 'stage-editor.html'));
let copied = copyTree(path.join(root, 'nodes'), path.join(dist, 'nodes'), editorFile);
// the three stage nodes with the same settings share one editor definition
const stageEditor = fs.readFileSync(path.join(root, 'nodes', 'shared', 'stage-editor.html'), 'utf8');
for (const stage of ['prepare', 'snapshot', 'post-snapshot']) {
  fs.writeFileSync(path.join(dist, 'nodes', stage, `${stage}.html`), stageEditor.replace(/\{\{stage\}\}/g, stage));
  copied++;
}
copied += copyTree(
  path.join(root, 'src', 'providers', 'hyperv', 'scripts'),
  path.join(dist, 'src', 'providers', 'hyperv', 'scripts'),
  (f) => f.endsWith('.ps1'),
);

const { schemas, manifestSchema } = require(path.join(dist, 'src', 'contract', 'schemas.js'));
const out = path.join(root, 'schemas');
fs.mkdirSync(out, { recursive: true });
for (const [stage, schema] of Object.entries(schemas)) {
  fs.writeFileSync(path.join(out, `backup-set.${stage}.schema.json`), JSON.stringify(schema, null, 2) + '\n');
}
fs.writeFileSync(path.join(out, 'manifest.schema.json'), JSON.stringify(manifestSchema, null, 2) + '\n');
// The host node's settings rules and their checking function, written into its editor, so that
// the dialog and the runtime apply one validator (src/host/settings.ts).
const settings = require(path.join(dist, 'src', 'host', 'settings.js'));
const hostHtml = path.join(dist, 'nodes', 'host', 'host.html');
const marker = '/*@HOST_SETTINGS_RULES@*/';
const html = fs.readFileSync(hostHtml, 'utf8');
if (!html.includes(marker)) throw new Error(`${hostHtml}: the marker ${marker} is missing`);
fs.writeFileSync(
  hostHtml,
  html.replace(
    marker,
    () => `RULES = ${JSON.stringify(settings.HOST_RULES)};\n    hostFieldError = ${settings.hostFieldError.toString()};`,
  ),
);
fs.writeFileSync(path.join(out, 'host-settings.rules.json'), JSON.stringify(settings.HOST_RULES, null, 2) + '\n');
console.log(`assets: ${copied} files copied, ${Object.keys(schemas).length + 1} schemas written`);
