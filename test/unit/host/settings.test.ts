// One validator for the host settings: the runtime (hostSettings) and the editor (the function
// and rules written into dist/nodes/host/host.html at build time) give the same answer.
import * as assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as vm from 'node:vm';
import { journalPath, openHost } from '../../../src/host/open-host';
import { createProvider } from '../../../src/providers';
import { SshPowerShellRunner } from '../../../src/providers/hyperv/ssh-runner';
import { HOST_RULES, hostFieldError, hostSettings, type HostConfig } from '../../../src/host/settings';

const ROOT = path.resolve(__dirname, '../../../..');
const FP = 'SHA256:' + 'A'.repeat(43);
const base: HostConfig = { provider: 'qemu', hostName: 'h1', socketDir: '/run/qemu-server', repository: '/srv/backup' };
const ssh: HostConfig = {
  provider: 'hyperv',
  hostName: 'hv',
  repository: '/srv/backup',
  hvMode: 'ssh',
  sshHost: 'hv01',
  sshUser: 'backup',
};

/** The editor's copy: what the built host.html defines, run as the browser would. */
function editorValidator(): (field: string, value: unknown, config: Record<string, unknown>) => string | undefined {
  const html = readFileSync(path.join(ROOT, 'dist/nodes/host/host.html'), 'utf8');
  const script = html.split('<script type="text/javascript">')[1].split('</script>')[0];
  const m = /RULES = (.*);\n\s*hostFieldError = (function hostFieldError[\s\S]*?\n\});/.exec(script);
  assert.ok(m, 'the built host.html holds the rules and the function');
  const ctx: Record<string, unknown> = {};
  vm.runInNewContext(`RULES = ${m[1]}; hostFieldError = ${m[2]};`, ctx);
  const fn = ctx.hostFieldError as (r: unknown, f: string, v: unknown, c: unknown, e: boolean) => string | undefined;
  return (field, value, config) => fn(ctx.RULES, field, value, config, false);
}

describe('host settings: one validator', () => {
  const bad: [string, HostConfig, RegExp][] = [
    ['relative repository', { ...base, repository: 'rel/dir' }, /^Error: repository: "rel\/dir" must be an absolute path$/],
    ['missing socketDir', { ...base, socketDir: '' }, /^Error: socketDir: is required$/],
    ['unknown provider', { ...base, provider: 'vmware' }, /^Error: provider: "vmware" is not one of qemu, libvirt, hyperv$/],
    ['host name with a slash', { ...base, hostName: 'a/b' }, /^Error: hostName: "a\/b" must be letters/],
    ['freeze timeout out of range', { ...base, freezeTimeout: '0' }, /^Error: freezeTimeout: "0" must be a number from 1 to 600$/],
    ['freeze timeout not a number', { ...base, freezeTimeout: '10s' }, /^Error: freezeTimeout: "10s" must be a number/],
    ['ssh without host', { ...ssh, sshHost: ' ' }, /^Error: sshHost: is required$/],
    ['ssh port out of range', { ...ssh, sshPort: 70000 }, /^Error: sshPort: "70000" must be a number from 1 to 65535$/],
    [
      'a host key that is not a sha256 fingerprint',
      { ...ssh, sshHostKey: 'MD5:aa:bb' },
      /^Error: sshHostKey: "MD5:aa:bb" must be a SHA256 fingerprint as ssh-keygen -lf prints it/,
    ],
    ['ssh without password or key', { ...ssh }, /^Error: password: a password or a private key is required when hvMode is ssh$/],
    [
      'an exclude pattern without a disk part',
      { ...base, exclude: '100/scsi1, web-*' },
      /^Error: exclude: pattern 2 "web-\*" must be VM\/DISK \(letters, digits, \. _ : - and the wildcards \* \?\)/,
    ],
    ['an exclude pattern with a character of no id', { ...base, exclude: '100/scsi[1]' }, /^Error: exclude: pattern 1 "100\/scsi\[1\]"/],
    [
      'a relative libvirt scratch dir',
      { provider: 'libvirt', hostName: 'lv', repository: '/srv/backup', scratchDir: 'scratch' },
      /^Error: scratchDir: "scratch" must be an absolute path$/,
    ],
  ];
  for (const [what, config, error] of bad) {
    it(`refuses ${what}, naming the field`, () => {
      assert.throws(() => hostSettings(config, {}), error);
    });
  }

  it('builds the domain options, with the pinned host key in the one SSH options type', () => {
    const s = hostSettings({ ...ssh, sshPort: '2222', sshHostKey: ` ${FP} ` }, { password: 'pw' });
    assert.deepEqual(s.provider, {
      provider: 'hyperv',
      hostName: 'hv',
      hyperv: { mode: 'ssh', ssh: { host: 'hv01', port: 2222, username: 'backup', password: 'pw', hostFingerprint: FP } },
    });
    const q = hostSettings({ ...base, freezeTimeout: '5', sessionTimeout: '' });
    assert.equal(q.timeouts.freezeMs, 5000);
    assert.equal(q.timeouts.sessionMs, 360 * 60_000);
    assert.deepEqual(q.provider.qemu, { socketDir: '/run/qemu-server', inventory: 'json' });
    assert.deepEqual(q.exclude, []);
    assert.deepEqual(hostSettings({ ...base, exclude: ' 100/scsi1,web-*/vdb\n*/SCSI0:1 ' }).exclude, [
      '100/scsi1',
      'web-*/vdb',
      '*/SCSI0:1',
    ]);
  });

  it('libvirt: the URI and the scratch dir reach the provider', () => {
    const s = hostSettings({ provider: 'libvirt', hostName: 'lv', repository: '/srv/backup', scratchDir: '/var/tmp/lv-scratch' });
    assert.deepEqual(s.provider.libvirt, { uri: 'qemu:///system', scratchDir: '/var/tmp/lv-scratch' });
    const provider = createProvider(s.provider) as unknown as { options: { scratchDir?: string } };
    assert.equal(provider.options.scratchDir, '/var/tmp/lv-scratch');
  });

  it('the pinned host key reaches the Hyper-V SSH runner that checks it', () => {
    const provider = createProvider(hostSettings({ ...ssh, sshHostKey: FP }, { password: 'pw' }).provider) as unknown as {
      runner: unknown;
    };
    assert.ok(provider.runner instanceof SshPowerShellRunner);
    assert.equal((provider.runner as unknown as { options: { ssh: { hostFingerprint?: string } } }).options.ssh.hostFingerprint, FP);
  });

  it('ignores the fields of the provider not chosen, and SSH fields in local mode', () => {
    assert.doesNotThrow(() => hostSettings({ ...base, sshPort: 'x', hvMode: 'nonsense' }));
    assert.doesNotThrow(() => hostSettings({ ...ssh, hvMode: 'local', sshHost: '', sshHostKey: 'junk' }));
  });

  it('the editor gives exactly the runtime answer for every field (the same rules and function)', () => {
    const editor = editorValidator();
    const samples: unknown[] = [
      '',
      undefined,
      'rel',
      '/abs',
      '/a\0b',
      'qemu',
      'hyperv',
      'ssh',
      'local',
      '0',
      '5',
      '600',
      '601',
      'x',
      'a/b',
      'h-1.x',
      FP,
      `${FP}=`,
      'SHA256:short',
      70000,
      '100/scsi1, web-*/vdb',
      '*/*',
      'vm1',
      '/scsi1',
    ];
    const fields = [
      ...Object.keys(HOST_RULES.common),
      ...Object.keys(HOST_RULES.providers.qemu),
      ...Object.keys(HOST_RULES.providers.hyperv),
    ];
    let compared = 0;
    for (const config of [base, ssh, { ...ssh, hvMode: 'local' }]) {
      for (const field of fields) {
        for (const value of samples) {
          const c = { ...config, [field]: value };
          assert.equal(editor(field, value, c), hostFieldError(HOST_RULES, field, value, c), `${field}=${JSON.stringify(value)}`);
          compared++;
        }
      }
    }
    assert.ok(compared > 500);
    // the editor alone accepts an environment variable reference, which Node-RED substitutes
    assert.equal(hostFieldError(HOST_RULES, 'repository', '${BACKUP_DIR}', base, true), undefined);
    assert.match(hostFieldError(HOST_RULES, 'repository', '${BACKUP_DIR}', base) ?? '', /must be an absolute path/);
  });
});

describe('openHost: the host wiring outside Node-RED', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-openhost-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('opens the journal where journalPath says, runs recovery, reports nothing when there was nothing', async () => {
    const config = { ...base, socketDir: dir, repository: path.join(dir, 'repo') };
    const opened = await openHost(config, {}, dir);
    try {
      assert.equal(opened.host.journal.file, journalPath(opened.settings, dir));
      assert.equal(opened.host.journal.file, path.join(dir, 'vm-backup', 'journal-h1.jsonl'));
      assert.deepEqual(opened.actions, []);
      assert.equal(opened.report, undefined);
      assert.equal(opened.host.options.hostName, 'h1');
    } finally {
      await opened.host.provider.close();
      opened.host.journal.close();
    }
  });

  it('a journal that cannot be written refuses the host, naming journalDir', async () => {
    const file = path.join(dir, 'a-file');
    writeFileSync(file, '');
    await assert.rejects(
      openHost({ ...base, socketDir: dir, repository: path.join(dir, 'repo'), journalDir: file }, {}, dir),
      /^Error: journalDir: journal .* cannot be written/,
    );
  });

  it('a bad setting is refused before anything is opened', async () => {
    await assert.rejects(openHost({ ...base, repository: 'x' }, {}, dir), /^Error: repository: "x" must be an absolute path/);
  });
});
