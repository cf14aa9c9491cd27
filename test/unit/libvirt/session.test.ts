// The virsh session's framing, against a stand-in program that speaks like virsh's shell mode
// (banner, prompt and echoed command line on stdout, output; errors as "error: ..." on stderr;
// `echo --err` writes to stderr), as recorded from virsh 9.0 here. (The real virsh is driven by
// test/integration/libvirt.test.ts.)
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VirshError, type Virsh } from '../../../src/providers/libvirt/virsh';
import { VirshSession, VirshShell } from '../../../src/providers/libvirt/virsh-session';

const FAKE = `#!${process.execPath}
process.stdout.write('Welcome to virsh, the virtualization interactive terminal.\\n\\n');
if (process.env.FAKE_VIRSH_NO_DAEMON) {
  process.stderr.write('error: failed to connect to the hypervisor\\nerror: Failed to connect socket\\n');
  process.exit(1);
}
let buf = '';
let hung = false;
process.stdin.setEncoding('utf8').on('data', (d) => {
  buf += d;
  let i;
  while (!hung && (i = buf.indexOf('\\n')) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    const args = [...line.matchAll(/'([^']*)'|(\\S+)/g)].map((m) => m[1] ?? m[2]);
    process.stdout.write('virsh # ' + line + '\\n');
    if (args[0] === 'echo' && args[1] === '--err') { process.stderr.write('error: ' + args.slice(2).join(' ') + '\\n'); process.stdout.write('\\n'); }
    else if (args[0] === 'echo') process.stdout.write(args.slice(1).join(' ') + '\\n');
    else if (args[0] === 'domfsfreeze') process.stdout.write('Froze 1 filesystem(s)\\n\\n');
    else if (args[0] === 'domstate' && args[2] !== 'nope') process.stdout.write('running (booted)\\n\\n');
    else if (args[0] === 'dumpxml') process.stdout.write("<domain>\\n  <name>" + args[2] + "</name>\\n  <description>error: not one</description>\\n</domain>\\n\\n");
    else if (args[0] === 'warn') { process.stderr.write('warning: something to know\\n'); process.stdout.write('done\\n'); }
    else if (args[0] === 'hang') hung = true;
    else if (args[0] === 'backup-begin') process.stderr.write("error: internal error: Unable to parse RNG /usr/share/libvirt/schemas/domainbackup.rng: Error type 'unsignedInt' is not exported by type library 'http://www.w3.org/2001/XMLSchema-datatypes'\\n");
    else process.stderr.write("error: failed to get domain '" + args[2] + "'\\n");
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

  it("frames each command by its marks; success by the expected line, failure with virsh's error", async () => {
    const s = new VirshSession('qemu:///system', program);
    try {
      assert.match(await s.run(['domfsfreeze', '--domain', 'web'], /Froze \d+/, 5000), /Froze 1 filesystem/);
      await assert.rejects(s.run(['domstate', '--domain', 'nope'], /running/, 5000), /failed to get domain 'nope'/);
      assert.match(await s.run(['domfsfreeze', '--domain', 'web'], /Froze \d+/, 5000), /Froze 1/, 'the session goes on after a failure');
      await assert.rejects(s.run(['domstate', '--domain', 'web'], /Froze/, 5000), /unexpected answer: running \(booted\)/);
    } finally {
      s.close();
    }
  });

  it('gives each command exactly what virsh printed for it, calls sent together answered in order', async () => {
    const s = new VirshSession('qemu:///system', program);
    try {
      const calls = [
        s.call(['domstate', '--domain', 'a', '--reason'], 5000),
        s.call(['dumpxml', '--domain', 'a'], 5000),
        s.call(['domstate', '--domain', 'nope'], 5000).catch((e: unknown) => e),
        s.call(['warn'], 5000),
        s.call(['dumpxml', '--domain', 'b'], 5000),
      ];
      assert.ok(s.busy);
      const [state, xml, err, warned, xmlB] = await Promise.all(calls);
      assert.equal(state, 'running (booted)\n\n', 'no prompt, no echoed command line, no mark');
      assert.equal(xml, '<domain>\n  <name>a</name>\n  <description>error: not one</description>\n</domain>\n\n');
      assert.ok(err instanceof VirshError && err.detail === "failed to get domain 'nope'", String(err));
      assert.equal(warned, 'done\n', 'a warning on stderr is not a failure');
      assert.match(xmlB as string, /<name>b<\/name>/);
      assert.ok(!s.busy);
    } finally {
      s.close();
    }
  });

  it('refuses arguments its quoting cannot carry, and run() while a command is in flight', async () => {
    const s = new VirshSession('qemu:///system', program);
    try {
      await assert.rejects(s.run(['domstate', "it's"], /x/, 1000), /cannot be passed/);
      const hung = s.run(['hang'], /x/, 2000);
      await assert.rejects(s.run(['domfsfreeze'], /Froze/, 1000), /busy/);
      // the hung command ends in a failure at its timeout, never a success
      await assert.rejects(hung, /no answer from libvirtd within 2000 ms/);
      assert.ok(s.isClosed, 'a timeout ends the session');
    } finally {
      s.close();
    }
  });

  describe('VirshShell (enumerate through one virsh process)', () => {
    /** the one-shot runner the shell falls back on, recorded */
    const fallback = (): Virsh & { calls: string[][] } => {
      const calls: string[][] = [];
      return {
        uri: 'qemu:///system',
        calls,
        run: async (args: readonly string[]) => {
          calls.push([...args]);
          return `fallback ${args[0]}\n`;
        },
      };
    };

    it('sends the queries through one process; an argument the session cannot quote goes through a process of its own', async () => {
      const fb = fallback();
      const shell = new VirshShell(fb, program);
      try {
        const out = await Promise.all(['a', 'b', 'c'].map((d) => shell.run(['domstate', '--domain', d, '--reason'], { timeoutMs: 5000 })));
        assert.deepEqual(out, ['running (booted)\n\n', 'running (booted)\n\n', 'running (booted)\n\n']);
        assert.equal(await shell.run(['dumpxml', '--domain', "o'brien"]), 'fallback dumpxml\n');
        assert.deepEqual(shell.sent, { session: 3, fallback: 1 });
        // virsh's own error stays an error: not sent again
        await assert.rejects(shell.run(['domstate', '--domain', 'nope']), /failed to get domain/);
        assert.equal(fb.calls.length, 1);
      } finally {
        shell.close();
      }
    });

    it('a call that hangs fails at its timeout; the calls behind it are sent again through the fallback, not lost', async () => {
      const fb = fallback();
      const shell = new VirshShell(fb, program);
      try {
        const hung = shell.run(['hang'], { timeoutMs: 1500 });
        const behind = shell.run(['domstate', '--domain', 'x'], { timeoutMs: 5000 });
        await assert.rejects(hung, /no answer from libvirtd within 1500 ms/);
        assert.equal(await behind, 'fallback domstate\n');
        // and a new session serves the next call
        assert.equal(await shell.run(['domstate', '--domain', 'y', '--reason']), 'running (booted)\n\n');
      } finally {
        shell.close();
      }
    });

    it("libvirtd could not load its schema (libxml2's race): the command goes to the fallback, which runs it again; the session stays", async () => {
      const fb = fallback();
      const shell = new VirshShell(fb, program);
      try {
        assert.equal(
          await shell.run(['backup-begin', '--domain', 'a', '--backupxml', '/x.xml'], { timeoutMs: 5000 }),
          'fallback backup-begin\n',
        );
        assert.deepEqual(fb.calls, [['backup-begin', '--domain', 'a', '--backupxml', '/x.xml']]);
        assert.equal(await shell.run(['domstate', '--domain', 'y', '--reason']), 'running (booted)\n\n');
        assert.deepEqual(shell.sent, { session: 2, fallback: 1 });
      } finally {
        shell.close();
      }
    });

    it('libvirtd not answering (virsh exits at start): the call goes to the fallback, which waits for the daemon', async () => {
      const fb = fallback();
      process.env.FAKE_VIRSH_NO_DAEMON = '1';
      const shell = new VirshShell(fb, program);
      try {
        assert.equal(await shell.run(['list', '--all', '--name'], { timeoutMs: 5000 }), 'fallback list\n');
        assert.deepEqual(fb.calls, [['list', '--all', '--name']]);
      } finally {
        delete process.env.FAKE_VIRSH_NO_DAEMON;
        shell.close();
      }
    });
  });
});
