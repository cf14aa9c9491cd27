// VirshRunner rides over a libvirtd restart: a call virsh could not even send (no daemon) is run
// again until libvirtd answers, within DAEMON_WAIT_MS and the call's timeout; any other error
// fails at once. Against a stand-in program that fails to connect its first N runs.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SCHEMA_RETRIES, VirshError, VirshRunner } from '../../../src/providers/libvirt/virsh';

const FAKE = `#!${process.execPath}
const fs = require('node:fs');
const [count, fails] = [process.env.FAKE_COUNT, Number(process.env.FAKE_FAILS)];
const n = fs.existsSync(count) ? Number(fs.readFileSync(count, 'utf8')) : 0;
fs.writeFileSync(count, String(n + 1));
const args = process.argv.slice(4);
if (args[0] === 'bad') { process.stderr.write('error: failed to get domain x\\n'); process.exit(1); }
if (args[0] === 'backup-begin' && n < Number(process.env.FAKE_RNG_FAILS ?? 0)) {
  process.stderr.write("error: internal error: Unable to parse RNG /usr/share/libvirt/schemas/domainbackup.rng: Error type 'unsignedInt' is not exported by type library 'http://www.w3.org/2001/XMLSchema-datatypes'\\n");
  process.exit(1);
}
if (args[0] === 'hang') setInterval(() => {}, 1000);
else {
if (n < fails) {
  process.stderr.write("error: failed to connect to the hypervisor\\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory\\n");
  process.exit(1);
}
process.stdout.write('ok ' + args.join(' ') + '\\n');
}
`;

describe('libvirt VirshRunner: libvirtd not answering', function () {
  this.timeout(30_000);
  let dir: string;
  let program: string;
  let count: string;
  const runs = () => (existsSync(count) ? Number(readFileSync(count, 'utf8')) : 0);
  const virsh = (args: string[], timeoutMs = 10_000) => new VirshRunner('qemu:///system', program).run(args, { timeoutMs });

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-virsh-daemon-'));
    program = path.join(dir, 'virsh');
    count = path.join(dir, 'count');
    writeFileSync(program, FAKE);
    chmodSync(program, 0o755);
    process.env.FAKE_COUNT = count;
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
    delete process.env.FAKE_COUNT;
    delete process.env.FAKE_FAILS;
    delete process.env.FAKE_RNG_FAILS;
  });

  it('runs the command again once libvirtd answers', async () => {
    process.env.FAKE_FAILS = '2';
    const out = await virsh(['domjobinfo', '--domain', 'a']);
    assert.equal(out.trim(), 'ok domjobinfo --domain a');
    assert.equal(runs(), 3);
  });

  it('gives up within the call timeout, naming libvirtd and the URI', async () => {
    process.env.FAKE_FAILS = '1000';
    const t0 = Date.now();
    await assert.rejects(
      virsh(['domfsthaw', '--domain', 'a'], 1500),
      (err: unknown) =>
        err instanceof VirshError &&
        /libvirtd does not answer on qemu:\/\/\/system \(waited 1500 ms\): failed to connect/.test(err.message),
    );
    assert.ok(Date.now() - t0 < 6000, 'bounded by the call timeout');
  });

  it('a virsh that does not answer is stopped at the call timeout, and the error says so (not "failed without a message")', async () => {
    process.env.FAKE_FAILS = '0';
    await assert.rejects(
      virsh(['hang'], 800),
      (err: unknown) => err instanceof VirshError && /no answer from libvirtd within 800 ms/.test(err.message),
    );
  });

  it('any other error fails at once, run once', async () => {
    process.env.FAKE_FAILS = '0';
    await assert.rejects(new VirshRunner('qemu:///system', program).run(['bad']), /failed to get domain/);
    assert.equal(runs(), 1);
  });

  // libxml2 < 2.11 fills its XML Schema type table without a lock; a fresh libvirtd validating two
  // documents at once can fail to load its own schema (VirshError.schemaNotLoaded). Seen in CI.
  it('libvirtd could not load its schema: the command is run again, and goes through', async () => {
    process.env.FAKE_FAILS = '0';
    process.env.FAKE_RNG_FAILS = '2';
    const out = await virsh(['backup-begin', '--domain', 'a']);
    assert.equal(out.trim(), 'ok backup-begin --domain a');
    assert.equal(runs(), 3);
  });

  it("a schema that never loads fails after SCHEMA_RETRIES more runs, with libvirt's words and the count", async () => {
    process.env.FAKE_FAILS = '0';
    process.env.FAKE_RNG_FAILS = '1000';
    await assert.rejects(
      virsh(['backup-begin', '--domain', 'a']),
      (err: unknown) =>
        err instanceof VirshError && /Unable to parse RNG .*domainbackup\.rng.*before acting on it; ran 4 times/.test(err.message),
    );
    assert.equal(runs(), SCHEMA_RETRIES + 1);
  });
});
