// A progress line on a terminal, rewritten in place: rows staged and the rate. Silent when the
// stream is not a TTY (cron, pipes, CI logs).
export interface ProgressLine {
  update(rows: number): void;
  /** Clears the line. */
  done(): void;
}

interface TtyLike {
  isTTY?: boolean;
  write(text: string): boolean;
}

const SILENT: ProgressLine = { update: () => {}, done: () => {} };

export function progressLine(stream: TtyLike, label: string, intervalMs = 200, clock: () => number = Date.now): ProgressLine {
  if (!stream.isTTY) return SILENT;
  const started = clock();
  let shownAt = 0;
  let shown = false;
  return {
    update(rows) {
      const now = clock();
      if (now - shownAt < intervalMs) return;
      shownAt = now;
      shown = true;
      const rate = Math.round(rows / Math.max(0.001, (now - started) / 1000));
      stream.write(`\r\x1b[K${label}: ${rows.toLocaleString('en-US')} staged (${rate.toLocaleString('en-US')}/s)`);
    },
    done() {
      if (shown) stream.write('\r\x1b[K');
      shown = false;
    },
  };
}
