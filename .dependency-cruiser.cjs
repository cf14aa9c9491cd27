// The import map (issue 12), checked by `npx depcruise src nodes --config .dependency-cruiser.cjs`
// (scripts/lint.sh). Layers, from the bottom: src/ (the domain, no Node-RED), nodes/ (the Node-RED
// face), then lab/, bench/ and test/, which may use both. Type-only imports count too: a type
// import up a layer is the same knot in the design even if the compiler erases it.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'A module cycle: one of the two must not know the other (move the shared type or helper down).',
      // Allowed, one cycle: journal/check.ts takes the types JournalEntry and JournalOp from
      // journal.ts, which calls check.ts's parseJournal. The back edge is type-only (erased, so
      // nothing loads in a loop). The fix is to move those types to a file of their own; it waits
      // until the journal work in progress (issue 14, stopped VMs) has merged, not to collide with it.
      from: { pathNot: '^src/journal/(journal|check)\\.ts$' },
      to: { circular: true },
    },
    {
      name: 'no-circular-journal',
      severity: 'error',
      comment: 'no-circular for the two journal files: only their own two-file cycle (see there) is allowed.',
      from: { path: '^src/journal/(journal|check)\\.ts$' },
      to: { circular: true, viaSomeNot: '^src/journal/(journal|check)\\.ts$' },
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
        'A provider folder (src/providers/<x>/) does not import another one: what they share lives in src/providers/*.ts. ' +
        'The exception: libvirt runs QEMU underneath, and its backups are qcow2 chains that it reads with the same qemu-img ' +
        'wrapper as the QEMU provider (providers/qemu/qemu-img.ts), rather than a copy of it.',
      from: { path: '^src/providers/([^/]+)/' },
      to: {
        path: '^src/providers/([^/]+)/',
        pathNot: ['^src/providers/$1/', '^src/providers/qemu/qemu-img\\.ts$'],
      },
    },
    {
      name: 'only-libvirt-borrows-qemu-img',
      severity: 'error',
      comment: 'The one crossing allowed above is libvirt (and qemu itself) to providers/qemu/qemu-img.ts; no other provider runs QEMU.',
      from: { path: '^src/providers/[^/]+/', pathNot: '^src/providers/(libvirt|qemu)/' },
      to: { path: '^src/providers/qemu/qemu-img\\.ts$' },
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
