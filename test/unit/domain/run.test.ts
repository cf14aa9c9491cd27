// runProgram, started directly and through the program launcher process: the same results,
// errors, aborts and timeouts either way; a launcher that dies fails what it ran and is replaced.
import { strict as assert } from 'node:assert';
import { ProgramFailed, programLauncherPid, runProgram, useProgramLauncher } from '../../../src/util/run';

for (const viaLauncher of [false, true]) {
  describe(`runProgram (${viaLauncher ? 'through the launcher process' : 'started directly'})`, function () {
    this.timeout(20_000);
    before(() => useProgramLauncher(viaLauncher));
    after(() => useProgramLauncher(false));

    it('returns what the program wrote, with its argument vector passed as is (no shell)', async () => {
      const { stdout } = await runProgram('printf', ['%s|%s', 'a b', '$(echo no shell)']);
      assert.equal(stdout, 'a b|$(echo no shell)');
      assert.equal(programLauncherPid() !== undefined, viaLauncher);
    });

    it('streams stdout to onStdout', async () => {
      const chunks: string[] = [];
      await runProgram('printf', ['one\ntwo\n'], { onStdout: (c) => chunks.push(c) });
      assert.equal(chunks.join(''), 'one\ntwo\n');
    });

    it('fails with the exit code and the end of stderr', async () => {
      const err = await runProgram('sh', ['-c', 'echo broken >&2; exit 3']).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(err instanceof ProgramFailed);
      assert.equal(err.code, 3);
      assert.match(err.message, /sh exited with 3: broken/);
    });

    it('fails with ENOENT for a program that does not exist', async () => {
      const err = await runProgram('/nonexistent/vmb-program', []).then(
        () => undefined,
        (e: unknown) => e as NodeJS.ErrnoException,
      );
      assert.equal(err?.code, 'ENOENT');
    });

    it('stops the program when the signal aborts, and does not start one for an aborted signal', async () => {
      const ac = new AbortController();
      const t0 = Date.now();
      const running = runProgram('sleep', ['10'], { signal: ac.signal });
      setTimeout(() => ac.abort(new Error('set aborted')), 100);
      await assert.rejects(running, (e: Error) => e.name === 'AbortError' && /set aborted/.test(e.message));
      assert.ok(Date.now() - t0 < 5000, 'sleep was stopped');
      await assert.rejects(runProgram('true', [], { signal: ac.signal }), { name: 'AbortError' });
    });

    it('sends SIGTERM again until the program is gone (a first one can be lost)', async () => {
      // the shell takes the first SIGTERM and forgets it, as a starting qemu-nbd does
      const ac = new AbortController();
      const script = 'n=0; trap "n=\\$((n+1)); [ \\$n -ge 2 ] && exit 0" TERM; echo ready; while :; do sleep 0.05; done';
      let ready!: () => void;
      const seen = new Promise<void>((r) => (ready = r));
      const running = runProgram('sh', ['-c', script], { signal: ac.signal, onStdout: () => ready() });
      await seen;
      const t0 = Date.now();
      ac.abort(new Error('set aborted'));
      await assert.rejects(running, { name: 'AbortError' });
      const ms = Date.now() - t0;
      assert.ok(ms >= 150 && ms < 2000, `gone after the second SIGTERM (${ms} ms)`);
    });

    it('stops a qemu-nbd the moment its socket appears (where a single SIGTERM was lost 1 in 6)', async function () {
      const fsp = await import('node:fs/promises');
      const os = await import('node:os');
      const path = await import('node:path');
      const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmb-run-nbd-'));
      try {
        await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'a.qcow2'), '1M']);
        for (let i = 0; i < 20; i++) {
          const sock = path.join(dir, `${i}.sock`);
          const ac = new AbortController();
          const running = runProgram('qemu-nbd', [`--socket=${sock}`, '-f', 'qcow2', path.join(dir, 'a.qcow2')], { signal: ac.signal });
          running.catch(() => undefined);
          for (
            let d = 1;
            !(await fsp.stat(sock).then(
              () => true,
              () => false,
            ));
            d = Math.min(d * 2, 25)
          )
            await new Promise((r) => setTimeout(r, d));
          const t0 = Date.now();
          ac.abort(new Error('copy ended'));
          const gone = await Promise.race([
            running.then(
              () => true,
              () => true,
            ),
            new Promise((r) => setTimeout(r, 3000, false)),
          ]);
          assert.ok(gone, `qemu-nbd ${i} gone within 3 s of the abort (${Date.now() - t0} ms)`);
          await assert.rejects(running, { name: 'AbortError' });
        }
      } finally {
        // a qemu-nbd that missed its signal would keep this test process alive: ended by hand
        await runProgram('pkill', ['-KILL', '-f', dir]).catch(() => undefined);
        await fsp.rm(dir, { recursive: true, force: true });
      }
    });

    it('stops the program after timeoutMs', async () => {
      const t0 = Date.now();
      await assert.rejects(runProgram('sleep', ['10'], { timeoutMs: 100 }), ProgramFailed);
      assert.ok(Date.now() - t0 < 5000);
    });

    it('runs many programs at once', async () => {
      const out = await Promise.all(Array.from({ length: 40 }, (_, i) => runProgram('printf', [String(i)])));
      assert.deepEqual(
        out.map((r) => r.stdout),
        Array.from({ length: 40 }, (_, i) => String(i)),
      );
    });
  });
}

describe('the program launcher process', function () {
  this.timeout(20_000);
  before(() => useProgramLauncher(true));
  after(() => useProgramLauncher(false));

  it('fails what it was running when it dies, and a new one takes the next program', async () => {
    await runProgram('true', []);
    const first = programLauncherPid()!;
    const running = runProgram('sleep', ['10']);
    await new Promise((r) => setTimeout(r, 200));
    process.kill(first, 'SIGKILL');
    await assert.rejects(running, /program launcher exited \(SIGKILL\) before the program ended/);
    const { stdout } = await runProgram('printf', ['again']);
    assert.equal(stdout, 'again');
    assert.notEqual(programLauncherPid(), first);
  });
});
