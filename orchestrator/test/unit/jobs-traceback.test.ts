/**
 * The failure a command rank's stderr stands for: the last complete Python
 * traceback, its last line as the message, a fingerprint that ignores the
 * message (addresses, values) but not the exception type or the frames, and
 * a peer's broken collective classified as secondary.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TracebackCatcher } from "../../src/jobs/traceback.js";

function caught(lines: string[]): TracebackCatcher {
  const c = new TracebackCatcher();
  for (const l of lines) c.line(l);
  return c;
}

const tb = (message: string, line = 12): string[] => [
  "some output",
  "Traceback (most recent call last):",
  '  File "/w/train.py", line 40, in <module>',
  "    main()",
  `  File "/w/train.py", line ${line}, in main`,
  "    raise ValueError(x)",
  message,
  "more output after it",
];

void describe("command rank tracebacks", () => {
  void it("no traceback: no failure", () => {
    assert.equal(caught(["hello", "  indented", "Error: not python"]).failure(3), null);
  });

  void it("the last line is the message; the traceback is kept; the step is the rank's", () => {
    const f = caught(tb("ValueError: bad batch at 0x7f00"));
    const r = f.failure(7);
    assert.ok(r);
    assert.equal(r.kind, "exception");
    assert.equal(r.message, "ValueError: bad batch at 0x7f00");
    assert.equal(r.step, 7);
    assert.match(r.traceback, /^Traceback \(most recent call last\):\n {2}File "\/w\/train.py", line 40/);
    assert.match(r.traceback, /ValueError: bad batch at 0x7f00$/);
  });

  void it("the fingerprint ignores the message but not the type or the frames", () => {
    const a = caught(tb("ValueError: bad batch at 0x7f00")).failure(1)!.fingerprint;
    assert.equal(caught(tb("ValueError: bad batch at 0x5500")).failure(1)!.fingerprint, a);
    assert.notEqual(caught(tb("KeyError: 'x'")).failure(1)!.fingerprint, a);
    assert.notEqual(caught(tb("ValueError: bad batch at 0x7f00", 13)).failure(1)!.fingerprint, a);
  });

  void it("chained exceptions: the last traceback wins; an unfinished one does not count", () => {
    const lines = [...tb("KeyError: 'a'"), "", "During handling of the above exception, another exception occurred:", "", ...tb("RuntimeError: wrapped")];
    assert.equal(caught(lines).failure(0)!.message, "RuntimeError: wrapped");
    assert.equal(caught([...tb("KeyError: 'a'"), "Traceback (most recent call last):", '  File "x.py", line 1, in f']).failure(0)!.message, "KeyError: 'a'");
  });

  void it("a collective broken by a dead peer is secondary", () => {
    assert.equal(caught(tb("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection closed by peer [127.0.0.1]:1234")).failure(0)!.kind, "collective");
  });

  void it("a deep recursion's traceback stays bounded", () => {
    const deep = ["Traceback (most recent call last):", ...Array.from({ length: 5000 }, (_, i) => `  File "r.py", line ${i}, in f`), "RecursionError: maximum recursion depth exceeded"];
    const r = caught(deep).failure(0);
    assert.ok(r && Buffer.byteLength(r.traceback) <= 16 * 1024);
    assert.equal(r.message, "RecursionError: maximum recursion depth exceeded");
  });
});
