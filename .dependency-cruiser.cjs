// The import map (issue 12), checked by `npx depcruise src nodes --config .dependency-cruiser.cjs`
// (scripts/lint.sh). Layers, from the bottom: src/ (the domain, no Node-RED), nodes/ (the Node-RED
// face), then lab/, bench/ and test/, which may use both. Inside src/ the layers of
// docs/architecture.md (the layers-* rules). Type-only imports count too: a type
// import up a layer is the same knot in the design even if the compiler erases it.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'A module cycle: one of the two must not know the other (move the shared type or helper down).',
      from: {},
      to: { circular: true },
    },
    {
      name: 'src-not-to-node-red',
      severity: 'error',
      comment: 'src/ is the domain, testable and usable without Node-RED: it never imports nodes/ or Node-RED itself.',
      from: { path: '^src/' },
      to: { path: ['^nodes/', '(^|/)node_modules/(@types/)?(node-red|@node-red/|node-red-node-test-helper)'] },
    },
    {
      name: 'src-not-to-tools',
      severity: 'error',
      comment: 'src/ and nodes/ ship in the package; bench/, test/ and lab/ do not, so nothing shipped imports them.',
      from: { path: '^(src|nodes)/' },
      to: { path: '^(bench|test|lab)/' },
    },
    {
      name: 'provider-not-to-other-provider',
      severity: 'error',
      comment:
        'A provider folder (src/providers/<x>/) does not import another one: what they share (the qemu-img wrapper that ' +
        'the QEMU and libvirt providers both copy with, the offline image lock) lives in src/providers/*.ts.',
      from: { path: '^src/providers/([^/]+)/' },
      to: { path: '^src/providers/([^/]+)/', pathNot: '^src/providers/$1/' },
    },
    {
      name: 'providers-only-through-index',
      severity: 'error',
      comment:
        'Only src/providers/index.ts picks and builds a provider; the rest of src/ (and nodes/) speak to the ' +
        'HostProvider interface in src/providers/provider.ts, so a new hypervisor changes one file.',
      // a provider folder's own files import each other; crossings between folders are the rules above
      from: { path: '^(src|nodes)/', pathNot: ['^src/providers/index\\.ts$', '^src/providers/[^/]+/'] },
      to: { path: '^src/providers/[^/]+/' },
    },
    // The layers of src/ (docs/architecture.md), from the bottom: foundations (util, contract, journal,
    // repository, classify, summary, chain, providers) < ledger < guardian, recovery < pipeline < host.
    // Each rule below forbids one layer to import any layer above it: imports run down only.
    {
      name: 'layers-foundations-below-the-set',
      severity: 'error',
      comment:
        'The foundations (util, contract, journal, repository, classify, summary, chain, providers) know nothing of a ' +
        "backup set's life: they never import the ledger, the guardian, recovery, the pipeline or the host wiring.",
      from: { path: '^src/(util|contract|journal|repository|classify|chain|providers)/|^src/summary\\.ts$' },
      to: { path: '^src/(ledger|guardian|recovery|pipeline|host)/' },
    },
    {
      name: 'layers-ledger-below-its-readers',
      severity: 'error',
      comment:
        "The ledger (a set's effects, what is pending, one undo per kind) is read by the guardian, recovery and the " +
        'live set: it imports none of them.',
      from: { path: '^src/ledger/' },
      to: { path: '^src/(guardian|recovery|pipeline|host)/' },
    },
    {
      name: 'layers-guardian-and-recovery-below-the-pipeline',
      severity: 'error',
      comment:
        'The guardian process and recovery at start act through the ledger only: they never import the pipeline or the ' +
        'host wiring, nor each other (recovery finds a running guardian by its journal line and process, not its code).',
      from: { path: '^src/(guardian|recovery)/' },
      to: { path: '^src/(pipeline|host)/|^src/(guardian|recovery)/', pathNot: '^src/$1/' },
    },
    {
      name: 'layers-pipeline-below-the-host',
      severity: 'error',
      comment: 'The pipeline (the live set and its stages) is wired to a host node by src/host; it never imports src/host.',
      from: { path: '^src/pipeline/' },
      to: { path: '^src/host/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    // type-only imports are part of the map (see the top)
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    // the built js beside the sources would double every module
    exclude: { path: '^dist/' },
  },
};
