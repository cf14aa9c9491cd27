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
