// The two commands over a real chain: vm-backup-prune (a bad rule is a usage error naming the
// flag, exit 2, nothing touched; a dry run's JSON; the prune, exit 0) and vm-backup-verify's new
// flags (--record writes the records, --unverified skips what they cover, --proof none).
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildRepo, HOST, nightly } from './build-repo';

const PRUNE = path.resolve(__dirname, '../../../src/cli/prune.js');
const VERIFY = path.resolve(__dirname, '../../../src/cli/verify.js');
const HAVE = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
const cli = (file: string, args: string[]) =>
  spawnSync(process.execPath, [file, ...args], { encoding: 'utf8', env: { ...process.env, TZ: 'UTC' } });

(HAVE ? describe : describe.skip)('vm-backup-prune and vm-backup-verify', function () {
  this.timeout(120_000);
  let tmp: string;
  beforeEach(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-commands-'))));
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('prune: a bad rule exits 2 naming the flag; a dry run reports in JSON; the prune removes', () => {
    const repo = buildRepo(tmp, nightly('2026-11-02T03:00:00Z', 5), [{ id: 'drive-virtio0', fullAt: () => false }], { refs: false });
    const bad = cli(PRUNE, ['--repository', repo.root, '--host', HOST, '--keep-daily', '0']);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--keep-daily: "0" must be empty/);
    assert.equal(cli(PRUNE, ['--repository', 'relative/path', '--keep-last', '1']).status, 2);
    const dry = cli(PRUNE, ['--repository', repo.root, '--host', HOST, '--keep-last=2', '--dry-run', '--json']);
    assert.equal(dry.status, 0, dry.stderr);
    const report = JSON.parse(dry.stdout)[0];
    assert.equal(report.removed.length, 3);
    assert.equal(report.merged.length, 1);
    assert.equal(fs.readdirSync(repo.vmDir).length, 5);
    const done = cli(PRUNE, ['--repository', repo.root, '--host', HOST, '--keep-last', '2']);
    assert.equal(done.status, 0, done.stdout + done.stderr);
    assert.match(done.stdout, /removed 3 backups/);
    assert.deepEqual(fs.readdirSync(repo.vmDir).sort(), repo.ids.slice(3));
  });

  it('verify: --record writes each record; --unverified then skips them', () => {
    const repo = buildRepo(tmp, nightly('2026-11-02T03:00:00Z', 3), [{ id: 'drive-virtio0', fullAt: () => false }], { refs: false });
    const plain = cli(VERIFY, [repo.root]);
    assert.equal(plain.status, 0, plain.stdout);
    assert.ok(!fs.existsSync(path.join(repo.vmDir, repo.ids[0], 'verify.json')), 'read-only unless --record');
    const recorded = cli(VERIFY, ['--record', '--proof', 'none', repo.root]);
    assert.equal(recorded.status, 0, recorded.stdout);
    for (const id of repo.ids) assert.ok(fs.existsSync(path.join(repo.vmDir, id, 'verify.json')));
    const skipped = cli(VERIFY, ['--unverified', '--record', repo.root]);
    assert.equal(skipped.status, 0);
    assert.equal((skipped.stdout.match(/^SKIP /gm) ?? []).length, 3, skipped.stdout);
    assert.equal(cli(VERIFY, ['--reverify-days', '0', repo.root]).status, 2);
  });
});
