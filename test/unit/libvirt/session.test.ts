// The virsh session's framing, against a stand-in program that speaks like virsh's shell mode
// (prompt, echoed command line, output; errors on stderr).
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VirshSession } from '../../../src/providers/libvirt/virsh-session';

const FAKE = `#!${process.execPath}
process.stdout.write('Welcome to virsh\\n');
let buf = '';
process.stdin.setEncoding('utf8').on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    const args = [...line.matchAll(/'([^']*)'|(\\S+)/g)].map((m) => m[1] ?? m[2]);
    process.stdout.write('virsh # ' + line + '\\n');
    if (args[0] === 'echo') process.stdout.write(args.slice(1).join(' '));
    else if (args[0] === 'domfsfreeze') process.stdout.write('Froze 1 filesystem(s)\\n\\n');
    else if (args[0] === 'hang') {}
    else process.stderr.write('error: failed to get domain ' + args[2] + '\\n');
  }
});
process.stdin.on('end', () => process.exit(0));
`;

describe('libvirt virsh session', function () {
  this.timeout(20_000); // a Node.js stand-in starts slowly on a busy host
  let dir: string;
  let program: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-fake-virsh-'));
    program = path.join(dir, 'virsh');
    writeFileSync(program, FAKE);
    chmodSync(program, 0o755);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("frames each command by its echo mark; success by the expected line, failure with virsh's error", async () => {
    const s = new VirshSession('qemu:///system', program);
    try {
      assert.match(await s.run(['domfsfreeze', '--domain', 'web'], /Froze \d+/, 5000), /Froze 1 filesystem/);
      await assert.rejects(s.run(['domstate', '--domain', 'nope'], /running/, 5000), /failed to get domain nope/);
      assert.match(await s.run(['domfsfreeze', '--domain', 'web'], /Froze \d+/, 5000), /Froze 1/, 'the session goes on after a failure');
    } finally {
      s.close();
    }
  });

  it('refuses arguments its quoting cannot carry, and a second command while one runs', async () => {
    const s = new VirshSession('qemu:///system', program);
    try {
      await assert.rejects(s.run(['domstate', "it's"], /x/, 1000), /cannot be passed/);
      const hung = s.run(['hang'], /x/, 2000);
      await assert.rejects(s.run(['domfsfreeze'], /Froze/, 1000), /busy/);
      // the hung command ends in a failure (timeout or the stand-in's empty answer), never a success
      await assert.rejects(hung);
    } finally {
      s.close();
    }
  });
});
