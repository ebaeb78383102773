import { describe, expect, it } from 'vitest';
import { progressLine } from './progress-line.ts';

function terminal(isTTY: boolean) {
  const written: string[] = [];
  return { isTTY, written, write: (text: string) => written.push(text) > 0 };
}

describe('progressLine', () => {
  it('rewrites one line in place on a TTY, at most once per interval, and clears it at the end', () => {
    const tty = terminal(true);
    let now = 1_000_000;
    const progress = progressLine(tty, 'sync:events', 20, () => now);
    now += 500;
    progress.update(1000);
    now += 19;
    progress.update(2000); // within the interval: not shown
    now += 2;
    progress.update(123_456);
    progress.done();
    expect(tty.written).toHaveLength(3);
    expect(tty.written[0]).toBe('\r\x1b[Ksync:events: 1,000 staged (2,000/s)');
    expect(tty.written[1]).toBe('\r\x1b[Ksync:events: 123,456 staged (236,960/s)');
    expect(tty.written[2]).toBe('\r\x1b[K');
  });

  it('writes nothing when not a TTY', () => {
    const pipe = terminal(false);
    const progress = progressLine(pipe, 'sync:events', 0);
    progress.update(5);
    progress.done();
    expect(pipe.written).toEqual([]);
  });
});
